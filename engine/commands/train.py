"""`python -m engine train RUN_DIR [--resume]`: the long-running training process of one run directory.

Exit codes: 0 finished or stopped (a checkpoint was saved), 1 failed (an `error` event says why), 2 bad arguments.
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "profile.toml").is_file():
        print(f"engine train: {run_dir} is not a run directory (no profile.toml)", file=sys.stderr)
        return 2
    from engine.train.loop import TestHooks, Trainer
    from engine.train.process import setup_logging

    setup_logging()
    return Trainer(run_dir, resume=args.resume, hooks=TestHooks.from_env()).run()


if __name__ == "__main__":
    sys.exit(main())
