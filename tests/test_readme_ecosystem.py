"""The README's sections on export, TensorBoard and W&B, sweeps and the browser console name commands and options
that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _subcommands() -> set[str]:
    from tunix_tui.cli import build_parser

    parser = build_parser()
    return {name for action in parser._subparsers._group_actions for name in action.choices}  # noqa: SLF001


def test_the_sections_are_there():
    for heading in ("### Export", "### TensorBoard and Weights & Biases", "### Sweeps", "### The console in a browser",
                    "### GSM8K offline"):
        assert f"\n{heading}\n" in README, heading


def test_every_command_in_the_readme_exists():
    names = _subcommands()
    used = set(re.findall(r"(?:`|bin/)tunix-tui (\w+)", README))
    assert used <= names, used - names


def test_the_options_the_readme_uses_exist():
    from engine.commands.export import build_parser as export_parser
    from tunix_tui.sweep import build_parser as sweep_parser

    export_help = export_parser().format_help()
    for option in re.findall(r"tunix-tui export [^\n`|]*", README):
        for flag in re.findall(r"--[\w-]+", option):
            assert flag in export_help, flag
    sweep_help = sweep_parser().format_help()
    for action in ("status", "stop", "resume"):
        assert action in sweep_help
    from tunix_tui.cli import build_parser

    run_help = next(a for a in build_parser()._subparsers._group_actions).choices["run"].format_help()  # noqa: SLF001
    for flag in ("--sweep", "--yes", "--parallel"):
        assert flag in run_help
    serve_help = next(a for a in build_parser()._subparsers._group_actions).choices["serve"].format_help()  # noqa
    assert "--host" in serve_help and "--port" in serve_help
    assert (ROOT / "bench" / "export_check.py").is_file()
