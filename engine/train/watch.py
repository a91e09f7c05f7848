"""What the training loop reports besides its metrics, after each step: `system` events (the process and its
devices), `alert` events (engine.train.alerts) and `probe` events (the fixed probe questions answered greedily).

`Watch(trainer)` is made once the trainer is built; the loop calls `after_step(step, metrics, memory)` once the
step event is written and `after_evaluations(step, evaluation)` at the end of the step (with the step's validation
evaluation, or None). Probes are the first `eval.probe_questions` validation questions (the test split's when there
is no validation split); on a step with a greedy validation evaluation of at least that many questions they are the
evaluation's own first answers, else one greedy pass answers them (batched like an evaluation, so its program is an
evaluation's).
"""

from __future__ import annotations

import logging
from typing import Any

from engine.train.alerts import AlertMonitor

log = logging.getLogger("engine")


class Watch:
    """System figures, alerts and probes of one trainer."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        p = trainer.profile
        self.alerts = AlertMonitor(p.alerts, emit=self._alert)
        self.system: Any = None
        try:
            from engine.train.system import SystemSampler

            self.system = SystemSampler()
        except Exception as exc:  # noqa: BLE001 - no psutil: no system events, never a failed run
            log.warning("no system figures: %s", exc)
        splits = trainer.splits
        self.probe_split = "validation" if splits.validation else "test"
        pool = splits.validation or splits.test
        self.probe_examples = list(pool[:p.eval.probe_questions]) if p.eval.probe_questions > 0 else []
        self.probe_every = p.eval.probe_every_n_steps or p.training.eval_every_n_steps
        # the evaluations' batch, so that a probe pass runs their compiled program
        batch = max(p.training.micro_batch_size * p.grpo.num_generations, 8)
        n = len(pool) if p.eval.num_questions >= len(pool) else p.eval.num_questions
        self.probe_batch = max(1, min(batch, n))

    # -- events ------------------------------------------------------------------------------------------------

    def _alert(self, payload: dict[str, Any]) -> None:
        t = self.trainer
        t.log.emit("alert", **payload)
        log_alert = getattr(t.wandb, "log_alert", None)
        if callable(log_alert):
            log_alert(payload)

    def after_step(self, step: int, metrics: dict[str, Any], memory: list[dict[str, Any]]) -> None:
        """The step event is written: a system event, then the step alerts."""
        if self.system is not None:
            try:
                self.trainer.log.emit("system", **self.system.snapshot(step, memory))
            except Exception as exc:  # noqa: BLE001 - figures are a nicety
                log.warning("system figures failed: %s", exc)
                self.system = None
        self.alerts.observe_step(step, metrics)

    def after_evaluations(self, step: int, evaluation: Any = None) -> None:
        """The step's checkpoint and evaluation are done: the evaluation alerts, and the probes when due."""
        if evaluation is not None and getattr(evaluation, "split", "") == "validation":
            counts = evaluation.counts
            self.alerts.observe_eval(step, counts.accuracy, counts.format_accuracy)
        if self.probe_examples and self.probe_every and step % self.probe_every == 0:
            self.probe(step, evaluation)

    # -- probes ------------------------------------------------------------------------------------------------

    def probe(self, step: int, evaluation: Any = None) -> dict[str, Any]:
        """Answer the probe questions (or take the evaluation's answers to them) and write a `probe` event."""
        from engine.rewards import score_all

        t = self.trainer
        examples = self.probe_examples
        k = len(examples)
        records = None
        if evaluation is not None and evaluation.preset == "greedy" and evaluation.split == self.probe_split \
                and len(evaluation.records) >= k \
                and [r.get("id") for r in evaluation.records[:k]] == [e.id for e in examples]:
            records = evaluation.records[:k]
        if records is None:
            records = self._answer(step)
        completions = [str(r.get("completion", "")) for r in records]
        scores = score_all(t.rewards, [t.encoder.text(e) for e in examples], completions, [e.answer for e in examples])
        probes = []
        for i, (e, r) in enumerate(zip(examples, records)):
            probes.append({"index": i, "question": e.question, "answer": e.answer, "completion": completions[i],
                           "extracted": r.get("extracted"), "correct": bool(r.get("correct")),
                           "format_correct": bool(r.get("format_correct")), "rewards": scores.breakdown(i),
                           "total": float(scores.total[i])})
        return t.log.emit("probe", step=step, split=self.probe_split, preset="greedy", probes=probes)

    def _answer(self, step: int) -> list[dict[str, Any]]:
        """One greedy pass over the probe questions with the evaluation sampler, batched as an evaluation."""
        from engine.train.evaluation import evaluate

        t = self.trainer
        p = t.profile
        t.log.status("evaluating", step=step, detail=f"{len(self.probe_examples)} probe questions (greedy)")
        sampler = t._evaluation_sampler()
        result = evaluate(sampler, t.encoder, self.probe_examples, preset="greedy", split=self.probe_split,
                          eos_ids=t.eos_ids, batch_size=self.probe_batch, seed=p.run.seed)
        sampler.release()
        return result.records
