"""The profile editor keeps the user's file: saving changes only the edited keys (comments, key order, number
spelling, one-line arrays and values equal to the defaults stay as written), asks before dropping keys the schema
does not know, "save as" names the run after the new file, the file opens in $EDITOR and is checked on return, a
diff against the shipped defaults; shift+tab never lands on an invisible focus stop. The last test drives the real
console under tmux and compares the saved file's bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from engine.profile_io import load_profile, update_toml
from tunix_tui.app import TunixApp
from tunix_tui.core.form import ProfileForm
from tunix_tui.screens.dialogs import ChoiceScreen, ConfirmScreen, PromptScreen, TextScreen
from tunix_tui.screens.editor import EditorScreen
from screen import console, screen_text, wait_until

ROOT = Path(__file__).resolve().parent.parent

COMMENTED = """\
# My experiment: a commented profile, written by hand.
# Second line of the header.

[run]
name = "mine"          # the run's name
seed = 7

# --- model -------------------------------------------------------------
[model]
model_size = "270m"    # explicit, and equal to the default
weight_source = "random"
lora_rank = 8

[optimizer]
learning_rate = 1e-5   # spelled the short way
warmup_ratio = 0.0

[generation]
eos_tokens = [1, 106]  # a one-line array
max_generation_steps = 64

[training]
num_batches = 20
"""


def only_line_changed(before: str, after: str, old: str, new: str) -> None:
    """`after` is `before` with exactly the line `old` replaced by `new`, byte for byte."""
    assert before.count(old) == 1
    assert after == before.replace(old, new)


# ---------------------------------------------------------------------------------------------------------------
# the form (no UI)


def test_saving_changes_only_the_edited_value(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(COMMENTED)
    form = ProfileForm.open(path)
    form.set_text("run.seed", "8")
    form.save()
    only_line_changed(COMMENTED, path.read_text(), "seed = 7\n", "seed = 8\n")

    form.set_text("optimizer.learning_rate", "2e-5")  # spelled as typed, the comment kept
    form.save()
    assert "learning_rate = 2e-5   # spelled the short way\n" in path.read_text()
    form.set_text("generation.eos_tokens", "1, 106, 2")  # a bare list: still one line
    form.save()
    assert "eos_tokens = [1, 106, 2]  # a one-line array\n" in path.read_text()
    assert 'model_size = "270m"    # explicit, and equal to the default\n' in path.read_text()
    assert load_profile(path).optimizer.learning_rate == 2e-5


def test_new_keys_go_into_their_section_and_new_sections_at_the_end(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(COMMENTED)
    form = ProfileForm.open(path)
    form.set_text("model.lora_alpha", "16")
    form.set_text("grpo.beta", "0.04")
    form.set_value("model.model_size", "270m")  # unchanged: nothing written
    form.save()
    text = path.read_text()
    assert text.startswith(COMMENTED.split("[optimizer]")[0].replace("lora_rank = 8\n", "lora_rank = 8\nlora_alpha = 16\n"))
    assert text.endswith("num_batches = 20\n\n[grpo]\nbeta = 0.04\n")
    profile = load_profile(path)
    assert profile.model.lora_alpha == 16.0 and profile.grpo.beta == 0.04


def test_a_value_set_back_to_its_default_stays_written(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(COMMENTED)
    form = ProfileForm.open(path)
    form.set_text("model.lora_rank", "32")  # the default
    form.save()
    only_line_changed(COMMENTED, path.read_text(), "lora_rank = 8\n", "lora_rank = 32\n")


def test_unknown_keys_are_kept_unless_dropped(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text("# typo below\n[grpo]\nbetta = 0.1   # meant beta\nbeta = 0.02\n")
    form = ProfileForm.open(path)
    assert [p.key for p in form.unknown_keys()] == ["grpo.betta"]
    form.set_text("grpo.beta", "0.03")
    form.save()
    assert path.read_text() == "# typo below\n[grpo]\nbetta = 0.1   # meant beta\nbeta = 0.03\n"
    assert form.unknown_keys()  # still there
    form.save(drop_unknown=True)
    assert path.read_text() == "# typo below\n[grpo]\nbeta = 0.03\n"
    assert not form.unknown_keys() and not form.file_problems


def test_root_keys_of_the_reference_project_are_edited_where_they_are(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text("seed = 3\nwandb_disabled = true\n")
    form = ProfileForm.open(path)
    form.set_text("run.seed", "4")
    form.set_value("logging.wandb_mode", "auto")
    form.save()
    assert path.read_text() == "seed = 4\nwandb_disabled = false\n"


def test_a_profile_without_a_file_is_written_fresh(tmp_path: Path):
    path = tmp_path / "new.toml"
    form = ProfileForm.open(path)
    form.set_text("grpo.beta", "0.04")
    form.save()
    assert path.read_text() == "[grpo]\nbeta = 0.04\n"


def test_update_toml_keeps_every_other_byte():
    text = "a = 1\n\n[model]  # section comment\nlora_rank = 4 # r\n\n[grpo]\n  beta = 0.1\n"
    assert update_toml(text, {}) == text
    assert update_toml(text, {"grpo.beta": 0.2}) == text.replace("0.1", "0.2")
    assert update_toml(text, {"model.lora_rank": 16}) == text.replace("= 4 #", "= 16 #")
    assert update_toml("[run]\nname = 'x'  # literal\n", {"run.name": "y"}) == "[run]\nname = 'y'  # literal\n"
    assert update_toml("[optimizer]\nlearning_rate = 1e-5\n", {"optimizer.learning_rate": 3e-6}) == \
        "[optimizer]\nlearning_rate = 3e-6\n"
    with pytest.raises(ValueError):
        update_toml("[run\n", {"run.seed": 1})


def test_form_diff_against_the_defaults(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text(COMMENTED)
    form = ProfileForm.open(path)
    diff = {key: how for key, _, _, how in form.differences()}
    assert diff["model.model_size"] == "explicit" and diff["model.lora_rank"] == "changed"
    assert "grpo.beta" not in diff


# ---------------------------------------------------------------------------------------------------------------
# the editor screen (Pilot)

@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(tmp_path: Path, profile: Path) -> TunixApp:
    return console(profile.parent, tmp_path / "runs", profile=profile, poll_interval=0.03, redraw_interval=0.03,
                   runs_refresh=0.2, cursor_blink=False)


def notified(app: TunixApp, text: str) -> bool:
    """Whether a notification (toast) says `text`."""
    return any(text in f"{n.title} {n.message}" for n in app._notifications)


async def editor(pilot: Any, app: TunixApp) -> EditorScreen:
    await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
    await pilot.pause(0.1)
    return app.screen  # type: ignore[return-value]


@pytest.mark.anyio
async def test_editor_saves_only_the_edited_key(tmp_path: Path):
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    app = make_app(tmp_path, path)
    async with app.run_test(size=(120, 36)) as pilot:
        ed = await editor(pilot, app)
        seed = await ed.focus_key("run.seed")
        seed.value = ""
        await pilot.press("9")
        await wait_until(pilot, lambda: ed.form.values["run.seed"] == 9)
        await pilot.press("f2")
        await wait_until(pilot, lambda: "seed = 9" in path.read_text())
        await wait_until(pilot, lambda: notified(app, "only the edited keys changed"))
    only_line_changed(COMMENTED, path.read_text(), "seed = 7\n", "seed = 9\n")


@pytest.mark.anyio
async def test_a_long_folder_never_hides_whether_the_profile_is_valid(tmp_path: Path):
    path = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8) / "mine.toml"
    path.parent.mkdir(parents=True)
    path.write_text(COMMENTED)
    app = make_app(tmp_path, path)
    async with app.run_test(size=(80, 24)) as pilot:
        ed = await editor(pilot, app)
        await wait_until(pilot, lambda: "· valid" in screen_text(app))
        title = next(line for line in screen_text(app).splitlines() if "Profile mine.toml" in line)
        assert "· valid" in title and title.rstrip().endswith("…")   # the folder is what gets cut
        assert ed.query_one("#editor-title").size.height == 1


@pytest.mark.anyio
async def test_editor_asks_before_dropping_unknown_keys(tmp_path: Path):
    path = tmp_path / "profiles" / "typo.toml"
    path.parent.mkdir()
    text = "# has a typo\n[grpo]\nbetta = 0.1\n"
    path.write_text(text)
    app = make_app(tmp_path, path)
    async with app.run_test(size=(120, 36)) as pilot:
        ed = await editor(pilot, app)
        (await ed.focus_key("grpo.beta")).value = "0.05"
        await wait_until(pilot, lambda: ed.form.values["grpo.beta"] == 0.05)
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert "grpo.betta" in screen_text(app) and "did you mean grpo.beta" in screen_text(app)
        await pilot.press("c")  # cancel: nothing written
        await wait_until(pilot, lambda: isinstance(app.screen, EditorScreen))
        assert path.read_text() == text
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("k")  # keep
        await wait_until(pilot, lambda: "beta = 0.05" in path.read_text())
        assert path.read_text() == text + "beta = 0.05\n"
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("d")  # drop
        await wait_until(pilot, lambda: "betta" not in path.read_text())
        assert path.read_text() == "# has a typo\n[grpo]\nbeta = 0.05\n"
        assert "problem" not in str(ed.query_one("#editor-title").render())


@pytest.mark.anyio
async def test_save_as_names_the_run_after_the_new_file(tmp_path: Path):
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    app = make_app(tmp_path, path)
    async with app.run_test(size=(120, 36)) as pilot:
        ed = await editor(pilot, app)
        await pilot.press("f3")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptScreen))
        target = path.with_name("second.toml")
        app.screen.query_one("#prompt-input").value = str(target)
        await pilot.press("enter")
        await wait_until(pilot, target.exists)
        assert ed.form.path == target and ed.query_one("#in-run--name").value == "second"
    only_line_changed(COMMENTED, target.read_text(), 'name = "mine"          #', 'name = "second"          #')
    assert path.read_text() == COMMENTED
    assert load_profile(target).run.name == "second"


@pytest.mark.anyio
async def test_external_editor_then_the_file_is_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    script = tmp_path / "fake-editor.sh"  # an "editor" that changes a value and adds a mistyped key
    script.write_text("#!/bin/sh\nsed -i 's/lora_rank = 8/lora_rank = 12/; s/^seed = 7/seed = 7\\nsede = 1/' \"$1\"\n")
    script.chmod(0o755)
    monkeypatch.setenv("VISUAL", str(script))
    app = make_app(tmp_path, path)
    async with app.run_test(size=(120, 36)) as pilot:
        app.suspend = nullcontext  # type: ignore[method-assign] - the headless driver cannot suspend
        ed = await editor(pilot, app)
        (await ed.focus_key("grpo.beta")).value = "0.04"  # an unsaved edit: saved first, when asked
        await wait_until(pilot, lambda: ed.form.dirty)
        await pilot.press("f7")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: ed.form.values["model.lora_rank"] == 12)
        await wait_until(pilot, lambda: "sede" in screen_text(app))  # re-validated: the new typo is reported
        assert (await ed.focus_key("model.lora_rank")).value == "12"
        assert (await ed.focus_key("grpo.beta")).value == "0.04"
        assert not ed.form.dirty and "beta = 0.04" in path.read_text()


@pytest.mark.anyio
async def test_diff_view_against_the_defaults(tmp_path: Path):
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    app = make_app(tmp_path, path)
    async with app.run_test(size=(120, 40)) as pilot:
        await editor(pilot, app)
        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, TextScreen))
        text = screen_text(app)
        assert "- lora_rank = 32" in text and "+ lora_rank = 8" in text
        assert "- learning_rate = 3e-6" in text and "+ learning_rate = 1e-5" in text
        assert "model.model_size" in text  # set in the file to its default


@pytest.mark.anyio
async def test_shift_tab_from_the_first_field_goes_to_the_section_list(tmp_path: Path):
    app = make_app(tmp_path, ROOT / "profiles" / "tiny.toml")
    async with app.run_test(size=(120, 36)) as pilot:
        ed = await editor(pilot, app)
        assert app.focused is ed.query_one("#in-run--name")
        seen = []
        for _ in range(6):  # around the whole cycle: every stop is a visible field or the section list
            await pilot.press("shift+tab")
            await pilot.pause(0.05)
            seen.append(app.focused)
        assert seen[0] is ed.query_one("#editor-sections")
        assert all(w is not None and ("field-input" in w.classes or w.id == "editor-sections") for w in seen)


# ---------------------------------------------------------------------------------------------------------------
# the real console under tmux


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_tmux_edit_a_commented_profile_and_save(tmp_path: Path):
    """A person's keystrokes in a real terminal: open the commented profile, move to `seed`, type a new value,
    save with ctrl+s, quit; the file's bytes are those of the original but for the edited value.

    Textual hands a key to the widget focused when the key is read, and a tab moves the focus only once that
    widget has passed it on: keys sent faster than a busy machine handles them land in the field the focus is
    leaving. So each key that moves the focus is followed by waiting until the help line at the bottom (the
    focused key's name, then its help) names the field expected, and text is typed only into a field seen focused."""
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text(COMMENTED)
    session = f"tunix-editor-{os.getpid()}"
    env_cmd = (f"cd {tmp_path} && TERM=xterm-256color {sys.executable} -m tunix_tui.cli --profile {path} "
               f"--output-dir {tmp_path / 'runs'} --profiles-dir {path.parent}")

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", session, *args], check=True, capture_output=True, text=True).stdout

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", session)

    def wait_for(shown: Any, what: str, timeout: float = 60.0) -> None:
        """Poll the screen until `shown(screen text)` holds (generous: the machine may be busy)."""
        deadline = time.monotonic() + timeout
        while not shown(text := screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not on screen after {timeout:.0f} s:\n{text}")
            time.sleep(0.1)

    def focused(key: str) -> Any:  # the help line starts with the focused field's key, then two spaces
        return lambda text: any(line.strip().startswith(key + "  ") for line in text.splitlines())

    def edited(name: str, value: str) -> Any:  # a field's row: `* name   value   default …`, marked edited
        return lambda text: re.search(rf"\* {name} +{value} +default ", text) is not None

    def send(*keys: str) -> None:
        tmux("send-keys", "-t", session, *keys)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["tmux", "-L", session, "-f", "/dev/null", "new-session", "-d", "-s", session, "-x", "160",
                    "-y", "48", env_cmd], check=True, env=env)
    try:
        wait_for(lambda text: "mine.toml" in text and "· valid" in text, "the editor on mine.toml, valid")
        wait_for(focused("run.name"), "the focus on run.name")
        send("Tab")
        wait_for(focused("run.output_dir"), "the focus on run.output_dir")
        send("Tab")
        wait_for(focused("run.seed"), "the focus on run.seed")
        send("-l", "1234")  # the seed's text is selected on focus, so typing replaces it
        wait_for(edited("seed", "1234"), "seed 1234, edited")
        wait_for(lambda text: "1 unsaved change" in text, "1 unsaved change")
        send("C-s")
        wait_for(lambda text: "only the edited keys changed" in text, "the saved notice")
        send("C-q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "tunix" in tmux("list-sessions", "-F", "#{pane_current_command}"):
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True)
    only_line_changed(COMMENTED, path.read_text(), "seed = 7\n", "seed = 1234\n")
