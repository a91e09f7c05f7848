"""The `tunix-tui` command.

With no sub-command it opens the console. Sub-commands that need the engine (run, resume, generate, eval, export) hand
the work to the engine's own process; the others (validate, ls, ctl) use only the light shared modules. Exit codes:
0 success, 1 the work failed, 2 bad input (profile, arguments).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.distributed import add_arguments as add_distributed_arguments
from engine.profile_io import ProfileError, dumps, load_profile, retired_notes
from engine.prompt import describe_template
from engine.protocol import (COMMANDS, FINAL_STATUSES, EventReader, RunAccessError, RunPaths, engine_alive, fatal_error,
                             find_run, list_runs, owner_name, send_command)

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
EXIT_HANGUP = 128 + signal.SIGHUP  # the terminal went away (what a shell reports for a process ended by SIGHUP)


def _fail(msg: str, code: int = EXIT_INPUT) -> int:
    print(f"tunix-tui: {msg}", file=sys.stderr)
    return code


def _print_problems(err: ProfileError) -> int:
    print(f"invalid profile ({len(err.problems)} problem{'s' if len(err.problems) != 1 else ''}):", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INPUT


def resolve_run(arg: str, output_dir: str = "runs") -> Path | None:
    """A run directory from a path or a run id (or unique id prefix / name suffix) under `output_dir`."""
    return find_run(arg, output_dir)


# ---------------------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile, args.overrides)
    except ProfileError as err:
        return _print_problems(err)
    print(f"{args.profile}: valid")
    for note in retired_notes(args.profile):
        print(f"note: {note}")
    print(f"prompt template: {describe_template(profile)}")
    if not args.quiet:
        print()
        print(dumps(profile), end="")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    runs = list_runs(args.output_dir)
    if not runs:
        print(f"no runs in {args.output_dir}/")
        return _print_sweeps(args.output_dir)
    print(f"{'RUN':<40} {'STATUS':<13} {'STEP':>11} {'REWARD':>8} {'ACC':>6} {'ELAPSED':>9}  LAST ALERT")
    for r in runs:
        step = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        reward = f"{r.reward:.3f}" if r.reward is not None else "-"
        acc = f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-"
        print(f"{r.run_id:<40} {r.status:<13} {step:>11} {reward:>8} {acc:>6} {_hms(r.elapsed):>9}  "
              f"{r.last_alert or '-'}")
    unreadable = [r for r in runs if r.status == "unreadable"]
    if unreadable:
        print(f"\n{len(unreadable)} run(s) cannot be read by you: " + "; ".join(
            f"{r.run_id} ({r.error})" for r in unreadable))
    return _print_sweeps(args.output_dir)


def _print_sweeps(output_dir: str) -> int:
    from tunix_tui.sweep import format_sweeps

    lines = format_sweeps(output_dir)
    if lines:
        print(f"\n{'SWEEP':<40} {'STATE':<9} QUEUE")
        print("\n".join(lines))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from tunix_tui.core.show import render, report
    run = resolve_run(args.run, args.output_dir)
    if run is None:
        return _fail(f"no run {args.run!r} (give a run directory or an id under {args.output_dir}/)")
    r = report(run)
    print(json.dumps(r, indent=2 if args.pretty else None) if args.json else render(r))
    return EXIT_OK


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _distributed(args: argparse.Namespace) -> tuple[object | None, int | None]:
    """(the settings of a run of several processes, or None for one; an exit code when the flags are wrong)."""
    from engine.distributed import settings_from
    try:
        settings = settings_from(args)
    except ValueError as exc:
        return None, _fail(str(exc))
    if settings is not None and (getattr(args, "detach", False) or getattr(args, "sweep", False)):
        return None, _fail("a run of several processes runs in the foreground, one command per process "
                           "(no --detach, no --sweep)")
    return settings, None


def _exec_engine(argv: list[str]) -> int:
    """Become the engine process (`python -m engine ARGV`), in the foreground: one process of a distributed run, as
    its launcher (srun, ssh) expects, signals and exit status its own."""
    from engine.launch import engine_env
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "engine", *argv], engine_env())
    return EXIT_FAIL  # not reached


def cmd_run(args: argparse.Namespace) -> int:
    from engine.launch import prepare_run, spawn_detached
    settings, bad = _distributed(args)
    if bad is not None:
        return bad
    if settings is not None:   # every process runs this; process 0 makes the run directory (engine/distributed.py)
        given = ["--output-dir", args.output_dir] if args.output_dir_given else []
        return _exec_engine(["train", "--new", args.profile, *args.overrides, *given, *settings.argv()])
    if args.sweep or args.yes or args.parallel != 1:
        if not args.sweep:
            return _fail("--yes and --parallel go with --sweep")
        from tunix_tui.sweep import run_sweep_command
        return run_sweep_command(args.profile, args.overrides, args.output_dir if args.output_dir_given else None,
                                 yes=args.yes, parallel=args.parallel, detach=args.detach)
    try:  # the profile's run.output_dir unless --output-dir is given
        paths = prepare_run(args.profile, args.overrides, args.output_dir if args.output_dir_given else None)
    except ProfileError as err:
        return _print_problems(err)
    except OSError as exc:
        return _fail(f"cannot create the run folder: {exc}", EXIT_FAIL)
    if not args.detach:
        ctrl_c_stops(paths.root)
    pid = spawn_detached(paths.root)
    print(f"run {paths.run_id} started (engine pid {pid}) in {paths.root}")
    if args.detach:
        print(f"follow it with: tunix-tui attach {paths.root}   stop it with: tunix-tui ctl {paths.root} stop")
        return EXIT_OK
    return follow(paths.root)


def cmd_resume(args: argparse.Namespace) -> int:
    from engine.launch import spawn_detached
    from engine.protocol import RunBusy
    settings, bad = _distributed(args)
    if bad is not None:
        return bad
    run = resolve_run(args.run, args.output_dir)
    if run is None:
        return _fail(f"no run {args.run!r} (give a run directory or an id under {args.output_dir}/)")
    if settings is not None:   # process 0's engine locks the run (another process's check here could see it start)
        return _exec_engine(["train", str(run), "--resume", *(["--allow-changes"] if args.allow_changes else []),
                             *settings.argv()])
    busy = f"run {run.name} is still running (one engine per run); attach to it with: tunix-tui attach {run}"
    if engine_alive(run):
        return _fail(busy)
    try:
        history = RunPaths(run).events.stat().st_size if RunPaths(run).events.exists() else 0
        if not args.detach:
            ctrl_c_stops(run)
        pid = spawn_detached(run, resume=True, allow_changes=args.allow_changes)
    except RunBusy:
        return _fail(busy)
    print(f"run {run.name} resuming (engine pid {pid})")
    return EXIT_OK if args.detach else follow(run, offset=history)  # not the old run's final status


def ctrl_c_stops(run_dir: Path) -> None:
    """From now on, Ctrl-C asks the run's engine to stop (it checkpoints first); a second Ctrl-C leaves it running
    and ends the command. Installed as soon as the engine is launched, before anything is printed, so that a Ctrl-C
    pressed at once is not lost; installing it again for the same run keeps what was already sent."""
    if getattr(signal.getsignal(signal.SIGINT), "run_dir", None) == run_dir:
        return
    stop_sent = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal stop_sent
        if stop_sent:
            print(f"\nleaving the engine running; it writes to {run_dir}", flush=True)
            raise SystemExit(EXIT_OK)
        stop_sent = True
        send_command(run_dir, "stop")
        print("\nstop sent: the engine saves a checkpoint and exits (Ctrl-C again to leave it running)", flush=True)

    on_sigint.run_dir = run_dir  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, on_sigint)


ENGINE_EXIT_WAIT_S = 30.0  # how long `follow` waits for the engine to exit after its final status


def follow(run_dir: Path, offset: int = 0) -> int:
    """Print one compact line per event of interest until the run ends. Ctrl-C asks the engine to stop
    (it checkpoints first); a second Ctrl-C leaves it running in the background."""
    from tunix_tui.progress import format_event
    reader = EventReader(RunPaths(run_dir).events, offset=offset)
    last_alive_check = time.monotonic()
    status = ""
    ctrl_c_stops(run_dir)

    def drain() -> str:
        nonlocal status
        for ev in reader.poll():
            line = format_event(ev)
            if line:
                print(line, flush=True)
            if ev.get("type") == "status":
                status = ev.get("status", status)
        return status

    def ended() -> int:
        """The exit status for the final status, once the engine process is gone (it closes its files after writing
        it), so that a command run next (a resume) never finds the run still busy."""
        deadline = time.monotonic() + ENGINE_EXIT_WAIT_S
        while engine_alive(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        return EXIT_OK if status in ("finished", "stopped") else EXIT_FAIL

    while True:
        if drain() in FINAL_STATUSES:
            return ended()
        if time.monotonic() - last_alive_check > 2.0:
            last_alive_check = time.monotonic()
            if not engine_alive(run_dir):
                time.sleep(0.5)  # the last events may still be on their way
                if drain() in FINAL_STATUSES:
                    return ended()
                log = RunPaths(run_dir).log
                crash = fatal_error(log)
                print(f"the engine process ended without a final status{f' ({crash})' if crash else ''}; see {log}",
                      file=sys.stderr)
                return EXIT_FAIL
        time.sleep(0.2)


def cmd_ctl(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.output_dir)
    if run is None:
        return _fail(f"no run {args.run!r} (give a run directory or an id under {args.output_dir}/)")
    owner = run.stat().st_uid
    if owner != os.getuid():  # the engine ignores commands written by anyone but its own user
        return _fail(f"run {run.name} is not yours (it belongs to {owner_name(run)}); only its owner can control it")
    if not engine_alive(run):
        return _fail(f"run {run.name} has no live engine; to continue it: tunix-tui resume {run}", EXIT_FAIL)
    reader = EventReader(RunPaths(run).events)
    reader.poll(max_bytes=None)  # skip history
    cid = send_command(run, args.action)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for ev in reader.poll():
            if ev.get("type") == "control_ack" and ev.get("id") == cid:
                ok = bool(ev.get("ok", True))
                print(f"{args.action}: {'acknowledged' if ok else 'refused'}"
                      + (f" ({ev['message']})" if ev.get("message") else ""))
                return EXIT_OK if ok else EXIT_FAIL
        if not engine_alive(run):
            return _fail("the engine exited before acknowledging", EXIT_FAIL)
        time.sleep(0.1)
    return _fail(f"no acknowledgement within {args.timeout:g} s (the command stays queued)", EXIT_FAIL)


def _engine(argv: list[str]) -> int:
    """Run an engine command in its own process, in the foreground."""
    from engine.launch import engine_env
    try:
        return subprocess.call([sys.executable, "-m", "engine", *argv], env=engine_env())
    except KeyboardInterrupt:
        return 130


def cmd_generate(args: argparse.Namespace, rest: list[str]) -> int:
    return _engine(["generate", *rest])


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    return _engine(["eval", *rest])


def cmd_sweep(args: argparse.Namespace, rest: list[str]) -> int:
    from tunix_tui.sweep import main as sweep_main
    given = ["--output-dir", args.output_dir] if getattr(args, "output_dir", None) else []
    return sweep_main([*given, *rest])


def cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    given = ["--output-dir", args.output_dir] if getattr(args, "output_dir", None) else []
    return _engine(["export", *given, *rest])


def cmd_serve(args: argparse.Namespace) -> int:
    from tunix_tui.serve import serve
    if not 0 < args.port < 65536:
        return _fail(f"--port must be between 1 and 65535, not {args.port}")
    return serve(host=args.host, port=args.port, profiles_dir=args.profiles_dir, output_dir=args.output_dir,
                 public_url=args.public_url)


def cmd_console(args: argparse.Namespace) -> int:
    attach = None
    if getattr(args, "run", None):
        attach = resolve_run(args.run, args.output_dir)
        if attach is None:
            return _fail(f"no run {args.run!r} (give a run directory or an id under {args.output_dir}/)")
        from tunix_tui.core import foldjob
        foldjob.prefetch(attach)  # a long history folds on the other core while the console starts
    from tunix_tui.app import TunixApp
    app = TunixApp(profiles_dir=Path(args.profiles_dir), runs_dir=Path(args.output_dir), attach=attach,
                   profile=Path(args.profile) if getattr(args, "profile", None) else None)
    app.run()
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunix-tui", description="A console for GRPO fine-tuning of Gemma 3 with LoRA. With no command it "
        "opens the console.")
    parser.add_argument("--profiles-dir", default="profiles", help="folder of profiles shown in the console")
    parser.add_argument("--output-dir", default=None,
                        help="folder of run directories (default: runs; `run` takes the profile's run.output_dir)")
    parser.add_argument("--profile", help="open the console on this profile's editor")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a profile and print it resolved")
    p.add_argument("profile", help="a .toml profile")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. grpo.beta=0.04")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the verdict")

    sub.add_parser("ls", help="list runs with their status")

    p = sub.add_parser("show", help="a one-shot summary of a run: status, step, metrics, evaluations, alerts, "
                       "checkpoints (for scripts and cron)")
    p.add_argument("run", help="run directory or run id")
    p.add_argument("--json", action="store_true", help="one JSON object (schema: tunix_tui/core/show.py)")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")

    p = sub.add_parser("run", help="start a training run (headless: one line per step)")
    p.add_argument("profile")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. training.micro_batch_size=1")
    p.add_argument("--detach", action="store_true", help="return at once; the engine runs in the background")
    p.add_argument("--sweep", "--multirun", "-m", dest="sweep", action="store_true",
                   help="one run per combination of comma-separated values, e.g. grpo.beta=0.0,0.04 "
                   "optimizer.learning_rate=1e-6,3e-6 (a queue that outlives the terminal; --multirun and -m as in "
                   "Hydra)")
    p.add_argument("--yes", action="store_true", help="with --sweep: start without asking")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="with --sweep: runs at a time (default 1)")
    add_distributed_arguments(p)

    p = sub.add_parser("resume", help="continue a stopped or failed run from its latest checkpoint")
    p.add_argument("run", help="run directory or run id")
    p.add_argument("--detach", action="store_true")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume although the run's profile.toml now differs from the checkpoint's in keys that "
                   "change the training (each change is recorded as an event)")
    add_distributed_arguments(p)

    p = sub.add_parser("ctl", help="send a command to a live run and wait for its acknowledgement")
    p.add_argument("run", help="run directory or run id")
    p.add_argument("action", metavar="COMMAND", choices=COMMANDS, help="one of: " + ", ".join(COMMANDS))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the acknowledgement")

    p = sub.add_parser("attach", help="open the console on a run's dashboard")
    p.add_argument("run", help="run directory or run id")

    p = sub.add_parser("serve", help="the console in a web browser (textual-serve)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; use an SSH tunnel "
                   "from elsewhere)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--public-url", default=None, help="the address browsers use, when it differs (a proxy)")

    sub.add_parser("generate", help="complete a prompt with a profile's or run's model (see: generate --help)",
                   add_help=False)
    sub.add_parser("eval", help="evaluate a run's checkpoint (see: eval --help)", add_help=False)
    sub.add_parser("export", help="export a run's model as PEFT adapters, a merged Hugging Face folder or GGUF "
                   "(see: export --help)", add_help=False)
    sub.add_parser("sweep", help="a sweep's queue: status, stop, resume (see: sweep --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # generate/eval/export take the engine's own arguments verbatim
    for name, fn in (("generate", cmd_generate), ("eval", cmd_eval), ("export", cmd_export), ("sweep", cmd_sweep)):
        if name in argv:
            idx = argv.index(name)
            if all(a.startswith("-") or argv[i - 1] in ("--profiles-dir", "--output-dir", "--profile")
                   for i, a in enumerate(argv[:idx])):
                args = parser.parse_args(argv[:idx])
                return fn(args, argv[idx + 1:])
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after a flag (`run P --detach a=1`): argparse ends a list of positionals at the flag
        if isinstance(getattr(args, "overrides", None), list) and all("=" in a and not a.startswith("-")
                                                                       for a in extra):
            args.overrides = [*args.overrides, *extra]   # (a new list: the default one is shared)
        else:
            parser.parse_args(argv)  # its own message about what it did not recognise, exit 2
    args.output_dir_given = args.output_dir is not None
    args.output_dir = args.output_dir if args.output_dir_given else "runs"
    handlers = {"validate": cmd_validate, "ls": cmd_ls, "show": cmd_show, "run": cmd_run, "resume": cmd_resume,
                "ctl": cmd_ctl,
                "attach": cmd_console, "serve": cmd_serve, None: cmd_console}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(EXIT_OK)
    except RunAccessError as exc:  # another user's run
        return _fail(str(exc))
    except OSError as exc:  # a full disk, a folder we may not write: a sentence, not a traceback
        if exc.errno == errno.EIO:  # the terminal hung up while we wrote to it: end as SIGHUP would, silently
            os._exit(EXIT_HANGUP)
        return _fail(f"{exc}", EXIT_FAIL)


if __name__ == "__main__":
    sys.exit(main())
