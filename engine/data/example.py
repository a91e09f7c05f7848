"""The unit of data: one question with its worked solution and normalised final answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from engine.data.answers import final_answer


@dataclass(frozen=True)
class Example:
    """One problem.

    question:    the question text given to the model.
    answer_text: the full worked solution, ending in GSM8K's `#### N` line when the source has one.
    answer:      the normalised final number ("1234", "-5", "2.5"); what rewards and evaluation compare against.
    id:          a stable identifier ("train-17", "builtin-3"), shown in samples and events.
    """

    question: str
    answer_text: str
    answer: str
    id: str


@dataclass(frozen=True)
class ParsedRows:
    """Examples parsed from raw rows, and how many rows were dropped because they had no usable answer."""

    examples: list[Example]
    dropped: int


class DataSourceError(RuntimeError):
    """A data source could not be read; the message names the source, the reason and the alternative."""


def rows_to_examples(rows: Iterable[Mapping[str, Any]], *, question_field: str, answer_field: str,
                     id_prefix: str) -> ParsedRows:
    """Turn raw rows into Examples; rows without a question or a parseable final answer are dropped and counted.

    Raises DataSourceError if the fields are missing from every row (most likely a wrong field name).
    """
    examples: list[Example] = []
    dropped = 0
    seen_fields: set[str] = set()
    any_has_fields = False
    for index, row in enumerate(rows):
        seen_fields.update(row.keys())
        if question_field in row and answer_field in row:
            any_has_fields = True
        question = row.get(question_field)
        answer_text = row.get(answer_field)
        if question is None or answer_text is None:
            dropped += 1
            continue
        question = str(question).strip()
        answer_text = str(answer_text).strip()
        answer = final_answer(answer_text)
        if not question or answer is None:
            dropped += 1
            continue
        examples.append(Example(question=question, answer_text=answer_text, answer=answer,
                                id=f"{id_prefix}-{index}"))
    if dropped and not any_has_fields:
        raise DataSourceError(
            f"no row has both fields {question_field!r} and {answer_field!r}; the rows have fields "
            f"{sorted(seen_fields)}: set data.question_field / data.answer_field")
    return ParsedRows(examples=examples, dropped=dropped)
