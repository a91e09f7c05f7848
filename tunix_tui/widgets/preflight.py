"""The editor's memory preflight: the profile's estimated peak memory against this machine's device
(engine/preflight.py), in the title line, and a question before launching what will not fit."""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text

from engine.preflight import MemoryEstimate, preflight

from tunix_tui.screens.dialogs import ConfirmScreen


def estimate_of(form: Any) -> MemoryEstimate | None:
    """The estimate for the form's profile (None when it cannot be built)."""
    try:
        return preflight(form.profile())
    except Exception:  # noqa: BLE001 - an estimate is a nicety: an odd value never breaks the editor
        return None


def preflight_text(form: Any) -> Text:
    """`  · est. peak 3.6 GB of 23.5 GB RAM`, in the warning colour when it will not fit."""
    est = estimate_of(form)
    if est is None:
        return Text()
    short = est.line().split(",")[0]
    if est.fits is False:
        return Text(f"  · {short}: will not fit", style="bold red")
    return Text(f"  · {short}", style="dim" if (est.share or 0) < 0.8 else "yellow")


def confirm_launch(screen: Any, form: Any, launch: Callable[[], None]) -> None:
    """Launch at once, or first ask when the estimate says the run will not fit the device."""
    est = estimate_of(form)
    if est is None or est.fits is not False:
        launch()
        return

    def answer(yes: bool | None) -> None:
        if yes:
            launch()
    screen.app.push_screen(ConfirmScreen("Launch although it will not fit?", f"The {est.line()}. Lower "
                                         "training.micro_batch_size, grpo.num_generations or the generation "
                                         "lengths, or pick a smaller model.", yes="Launch"), answer)
