"""`python -m engine <command> ...`: the engine's process entry point.

Commands: `train RUN_DIR [--resume]`, `generate PROFILE_OR_RUN PROMPT ...`, `eval RUN [--step N]`,
`export RUN --format F --out DIR`.
Each command module is imported only when used.
"""

from __future__ import annotations

import faulthandler
import importlib
import sys

COMMANDS = {
    "train": ("engine.commands.train", "Train the run in RUN_DIR (the long-running engine process)."),
    "generate": ("engine.commands.generate", "Complete a prompt with a profile's or a run's model."),
    "eval": ("engine.commands.evaluate", "Evaluate a run's checkpoint on test questions."),
    "export": ("engine.commands.export", "Export a run's model: PEFT adapters, merged Hugging Face folder, GGUF."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m engine COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # A crash below Python (a segmentation fault in XLA, say) leaves its cause and the Python stack in the log
    faulthandler.enable(all_threads=False)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
