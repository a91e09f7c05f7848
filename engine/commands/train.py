"""`python -m engine train RUN_DIR [--resume]`: the long-running training process of one run directory.

Exit codes: 0 finished or stopped (a checkpoint was saved), 1 failed (an `error` event says why), 2 bad arguments or
another engine already works on the run (one engine per run: it holds RUN_DIR/engine.lock for its whole life).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine train",
                                     description="Train the run in RUN_DIR (reads RUN_DIR/profile.toml).")
    parser.add_argument("run_dir", help="run directory created by `tunix-tui run` (holds profile.toml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run")
    parser.add_argument("--allow-changes", action="store_true",
                        help="resume although profile keys that change the training differ from the checkpoint's "
                        "(each change is recorded in an event)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        is_run = (run_dir / "profile.toml").is_file()
    except OSError as exc:  # another user's run, say
        print(f"engine train: cannot read {run_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not is_run:
        print(f"engine train: {run_dir} is not a run directory (no profile.toml)", file=sys.stderr)
        return 2
    from engine.protocol import RunBusy, acquire_run_lock, inherited_run_lock

    try:  # held until this process ends (the kernel lets go of it however the process ends)
        if inherited_run_lock(run_dir) is None:
            acquire_run_lock(run_dir)
    except RunBusy as exc:
        print(f"engine train: {exc}; not starting a second engine", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"engine train: cannot lock the run ({exc})", file=sys.stderr)
        return 2
    from engine.train.loop import Trainer
    from engine.train.process import setup_logging

    setup_logging()
    return Trainer(run_dir, resume=args.resume, allow_changes=args.allow_changes).run()


if __name__ == "__main__":
    sys.exit(main())
