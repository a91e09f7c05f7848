"""Evaluation: answer N questions with a decoding preset and count accuracy, partial accuracy and format accuracy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from engine.data.example import Example
from engine.grpo.eval_metrics import EVAL_PRESETS, EvalCounts, count_eval
from engine.train.text import PromptEncoder


@dataclass
class EvalResult:
    """Counts plus a few worked examples, ready for an `eval` event or a JSON file."""
    split: str
    preset: str
    counts: EvalCounts
    examples: list[dict[str, Any]] = field(default_factory=list)   # the first few, for the event
    records: list[dict[str, Any]] = field(default_factory=list)    # every question, for a report file
    seconds: float = 0.0
    tokens: int = 0

    def payload(self, step: int) -> dict[str, Any]:
        """The `eval` event's fields."""
        return {"step": step, "split": self.split, "num_questions": self.counts.total,
                "accuracy": self.counts.accuracy, "partial_accuracy": self.counts.partial_accuracy,
                "format_accuracy": self.counts.format_accuracy, "preset": self.preset, "examples": self.examples,
                "items": [[r["id"], int(r["correct"]), int(r["format_correct"])] for r in self.records]}

    def figures(self) -> dict[str, Any]:
        return dict(self.counts.summary(), seconds=self.seconds, tokens=self.tokens, preset=self.preset,
                    split=self.split)


def eval_batch_size(profile: Any, questions: int) -> int:
    """Rows per evaluation batch: a training step's completions (micro batch x generations), at least 8, at most
    the number of questions."""
    return min(max(profile.training.micro_batch_size * profile.grpo.num_generations, 8), questions)


def select(examples: Sequence[Example], n: int) -> list[Example]:
    """The first `n` examples (0 or more than there are: all)."""
    return list(examples) if n <= 0 or n >= len(examples) else list(examples[:n])


def evaluate(sampler: Any, encoder: PromptEncoder, examples: Sequence[Example], *, preset: str, split: str,
             eos_ids: Sequence[int], batch_size: int, seed: int = 0, num_examples: int = 3,
             on_progress: Callable[[int, int], None] | None = None,
             on_chunk: Callable[[int, int], None] | None = None) -> EvalResult:
    """Generate an answer to each example with `preset` and count (engine.grpo.eval_metrics).

    Batches are always `batch_size` rows (the last one padded by repeating prompts), so one sampler program
    serves the whole evaluation. `on_progress(done, total)` is called after each batch, `on_chunk(answered, total)`
    between the sampler's decode chunks (about every half second; answered counts the questions whose answer has
    ended), where a caller may also check for commands or wait."""
    settings = EVAL_PRESETS[preset]
    start = time.perf_counter()
    texts: list[str] = []
    lengths: list[int] = []
    truncated: list[bool] = []
    tokens = 0
    items = list(examples)
    for lo in range(0, len(items), batch_size):
        chunk = items[lo:lo + batch_size]
        prompts = [encoder.ids(e) for e in chunk]
        prompts += [prompts[-1]] * (batch_size - len(prompts))
        n = len(chunk)

        def between(_tokens: int, finished: int, before: int = lo, n: int = n) -> None:
            on_chunk(before + min(finished, n), len(items))

        out = sampler(prompts, temperature=float(settings["temperature"]), top_k=int(settings["top_k"]),
                      top_p=float(settings["top_p"]), greedy=bool(settings["greedy"]), seed=seed + lo,
                      between_chunks=between if on_chunk is not None else None)
        texts.extend(encoder.completions(out.tokens[:n], out.lengths[:n], eos_ids))
        tokens += int(out.lengths[:n].sum())
        lengths.extend(int(x) for x in out.lengths[:n])
        truncated.extend(bool(x) for x in out.truncated[:n])
        if on_progress is not None:
            on_progress(min(lo + batch_size, len(items)), len(items))
    counts = count_eval(texts, [e.answer for e in items])
    records = [{"id": e.id, "question": e.question, "answer": e.answer, "completion": text,
                "extracted": item.extracted, "correct": item.correct, "partially_correct": item.partially_correct,
                "format_correct": item.format_correct, "tokens": n, "truncated": cut}
               for e, text, item, n, cut in zip(items, texts, counts.items, lengths, truncated)]
    return EvalResult(split=split, preset=preset, counts=counts, examples=records[:num_examples], records=records,
                      seconds=time.perf_counter() - start, tokens=tokens)
