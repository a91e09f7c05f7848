"""Each split's first evaluation (its baseline) paired with later ones by question, for the metric loggers.

`EvalPairs.add(eval_payload)` remembers the first evaluation of a split that carries per-question `items`
(`[question_id, correct, strict_format]`), and for a later one returns the paired differences of accuracy and strict
format against it (`engine.evalstats.paired_difference`). A resumed run finds the baseline in the run's event file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = {"accuracy": 1, "format_accuracy": 2}


class EvalPairs:
    def __init__(self, events_path: str | Path | None = None):
        self.events_path = Path(events_path) if events_path else None
        self.first: dict[str, tuple[int, list[list[Any]]]] = {}
        self._scanned = False

    def _scan(self) -> None:
        """Earlier evaluations of this run (written by an earlier engine process)."""
        self._scanned = True
        if self.events_path is None or not self.events_path.is_file():
            return
        from engine.protocol import read_events

        for ev in read_events(self.events_path):
            if ev.get("type") == "eval" and ev.get("items") and ev.get("split") not in self.first:
                self.first[ev["split"]] = (int(ev.get("step") or 0), ev["items"])

    def add(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """None for a split's first evaluation; else {"baseline_step", "accuracy": PairedDiff, ...}."""
        from engine.evalstats import pair_by_id, paired_difference

        split, items = payload.get("split"), payload.get("items")
        if not split or not items:
            return None
        if split not in self.first and not self._scanned:
            self._scan()
            if self.first.get(split) == (int(payload.get("step") or 0), items):   # the scan found this very event
                return None
        if split not in self.first:
            self.first[split] = (int(payload.get("step") or 0), items)
            return None
        step, before_items = self.first[split]
        out: dict[str, Any] = {"baseline_step": step}
        for name, column in COLUMNS.items():
            before, after = pair_by_id(before_items, items, column)
            if before:
                out[name] = paired_difference(before, after)
        return out if len(out) > 1 else None
