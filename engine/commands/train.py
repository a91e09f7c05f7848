"""`python -m engine train RUN_DIR [--resume]`: the long-running training process of one run directory.

`python -m engine train --new PROFILE [KEY=VALUE ...] [--output-dir DIR]` makes the run directory first (as
`tunix-tui run` does) and trains it: the form every process of a distributed run starts with (engine/distributed.py;
`--coordinator HOST:PORT --num-processes N --process-id I`, or `--distributed` to take them from the environment).
There process 0 alone makes (or, resuming, locks) the run directory and tells the others its path; it writes the
events, engine.json, the lock and engine.log, and the others print their log and write only checkpoints (through
orbax). Every process runs in the foreground, as a cluster's launcher (srun, a TPU VM's ssh) expects.

Exit codes: 0 finished or stopped (a checkpoint was saved), 1 failed (an `error` event says why), 2 bad arguments or
another engine already works on the run (one engine per run: it holds RUN_DIR/engine.lock for its whole life).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from engine.distributed import add_arguments

    parser = argparse.ArgumentParser(prog="python -m engine train",
                                     description="Train the run in RUN_DIR (reads RUN_DIR/profile.toml).")
    parser.add_argument("run_dir", help="run directory created by `tunix-tui run` (holds profile.toml); with --new, "
                        "the profile to make a run of")
    parser.add_argument("overrides", nargs="*", help="with --new: key=value overrides of the profile")
    parser.add_argument("--new", action="store_true", help="make a run directory of the profile RUN_DIR first")
    parser.add_argument("--output-dir", default=None, help="with --new: where (default: the profile's "
                        "run.output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the run")
    parser.add_argument("--allow-changes", action="store_true",
                        help="resume although profile keys that change the training differ from the checkpoint's "
                        "(each change is recorded in an event)")
    add_arguments(parser)
    return parser


def claim_run(args: argparse.Namespace) -> tuple[Path | None, int | None]:
    """Make (--new) or check the run directory and take its lock -> (run directory, lock descriptor), or (None,
    None) after saying why not on stderr."""
    run_dir = Path(args.run_dir)
    if args.new:
        from engine.launch import prepare_run
        from engine.profile_io import ProfileError

        try:
            run_dir = prepare_run(args.run_dir, args.overrides, args.output_dir).root
        except ProfileError as err:
            print(f"engine train: invalid profile {args.run_dir} ({len(err.problems)} problem"
                  f"{'s' if len(err.problems) != 1 else ''}):", file=sys.stderr)
            for problem in err.problems:
                print(f"  {problem}", file=sys.stderr)
            return None, None
        except OSError as exc:
            print(f"engine train: cannot create the run folder: {exc}", file=sys.stderr)
            return None, None
    elif args.overrides:
        print("engine train: key=value overrides go with --new (a run's profile is frozen)", file=sys.stderr)
        return None, None
    try:
        is_run = (run_dir / "profile.toml").is_file()
    except OSError as exc:  # another user's run, say
        print(f"engine train: cannot read {run_dir}: {exc.strerror or exc}", file=sys.stderr)
        return None, None
    if not is_run:
        print(f"engine train: {run_dir} is not a run directory (no profile.toml)", file=sys.stderr)
        return None, None
    from engine.protocol import RunBusy, acquire_run_lock, inherited_run_lock

    try:  # held until this process ends (the kernel lets go of it however the process ends)
        lock = inherited_run_lock(run_dir)
        if lock is None:
            lock = acquire_run_lock(run_dir)
    except RunBusy as exc:
        print(f"engine train: {exc}; not starting a second engine", file=sys.stderr)
        return None, None
    except OSError as exc:
        print(f"engine train: cannot lock the run ({exc})", file=sys.stderr)
        return None, None
    return run_dir, lock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine import distributed

    try:
        settings = distributed.settings_from(args)
    except ValueError as exc:
        print(f"engine train: {exc}", file=sys.stderr)
        return 2
    if settings is None:
        run_dir, _lock = claim_run(args)
        if run_dir is None:
            return 2
        from engine.train.process import setup_logging

        setup_logging()
        return _train(run_dir, args)

    from engine.train.process import setup_logging

    setup_logging()   # the start-up's lines, before the processes know their numbers
    try:
        index, count = distributed.initialize(settings)
    except ValueError as exc:   # JAX found no coordinator, process count or id (no cluster it knows)
        print(f"engine train: cannot join the other processes: {exc} (give --coordinator HOST:PORT "
              f"--num-processes N --process-id I, or run under SLURM, Open MPI or on a Cloud TPU VM)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. the coordinator never answered: a sentence, not a traceback
        print(f"engine train: cannot join the other processes: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    claimed: Path | None = None
    if index == 0:
        claimed, _lock = claim_run(args)
    # process 0's run directory, to every process
    shared = distributed.share_text(str(claimed.resolve()) if claimed else "")
    if not shared:
        if index:
            print("engine train: process 0 did not start the run (see its output)", file=sys.stderr)
        return 2
    run_dir = Path(shared)
    tag = f"[process {index}/{count}] "
    if index == 0:
        from engine.protocol import RunPaths

        setup_logging(prefix=tag, also_to=RunPaths(run_dir).log)
        print(f"run {run_dir.name} {'resuming' if args.resume else 'started'} in {run_dir} ({count} processes; "
              f"follow it with: tunix-tui attach {run_dir})", flush=True)
    else:
        setup_logging(prefix=tag)
    return _train(run_dir, args)


def _train(run_dir: Path, args: argparse.Namespace) -> int:
    from engine.train.loop import Trainer

    return Trainer(run_dir, resume=args.resume, allow_changes=args.allow_changes).run()


if __name__ == "__main__":
    sys.exit(main())
