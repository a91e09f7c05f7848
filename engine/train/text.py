"""Prompts to token ids and generated ids back to text, shared by training and evaluation."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.buckets import next_pow2
from engine.data.example import Example
from engine.prompt import build_prompt, profile_template


def stop_token_sequences(tokenizer: Any, stop_strings: Sequence[str]) -> list[list[int]]:
    """The token sequences a completion ends with when its text ends with one of `stop_strings`.

    A tokenizer may split the same text differently after different characters, so each string is encoded after a
    few typical left contexts (nothing, a space, a digit, a letter, punctuation, a newline) and every distinct
    sequence is kept."""
    found: list[list[int]] = []
    for text in stop_strings:
        for left in ("", " ", "7", "a", ".", "\n"):
            before = tokenizer.encode(left) if left else []
            ids = tokenizer.encode(left + text)
            if ids[:len(before)] == before and len(ids) > len(before) and ids[len(before):] not in found:
                found.append(ids[len(before):])
    return found


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to and including the first stop string in it (all of it when there is none)."""
    ends = [text.find(s) + len(s) for s in stop_strings if s and s in text]
    return text[:min(ends)] if ends else text


class PromptEncoder:
    """Builds and tokenizes each example's prompt once (cached by example id), with the profile's template."""

    def __init__(self, tokenizer: Any, instructions: str = "", max_prompt_length: int = 256,
                 template: str | None = None, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.instructions = instructions or None
        self.template = template
        self.max_prompt_length = max_prompt_length
        self.stop_strings = tuple(stop_strings)
        self.stop_ids = stop_token_sequences(tokenizer, self.stop_strings)
        self._cache: dict[str, list[int]] = {}
        self.overlong: dict[str, int] = {}   # example key -> its whole prompt's length, for those cut to fit

    @classmethod
    def for_profile(cls, tokenizer: Any, profile: Any) -> "PromptEncoder":
        """The encoder a run of `profile` uses (its template, instructions, prompt length and stop strings)."""
        _, template, instructions = profile_template(profile)
        g = profile.generation
        return cls(tokenizer, instructions, g.max_prompt_length, template, g.stop_strings)

    def text(self, example: Example) -> str:
        return self.text_of(example.question)

    def text_of(self, question: str) -> str:
        """The prompt for a question."""
        return build_prompt(question, self.instructions, self.template)

    def completions(self, tokens: np.ndarray, lengths: np.ndarray, eos_ids: Sequence[int]) -> list[str]:
        """Text of each generated row, cut after the first stop string (see `decode_completions`)."""
        texts = decode_completions(self.tokenizer, tokens, lengths, eos_ids)
        return [cut_at_stop(t, self.stop_strings) for t in texts] if self.stop_strings else texts

    def ids(self, example: Example) -> list[int]:
        """Token ids with BOS; longer prompts keep their last `max_prompt_length` tokens."""
        key = example.id + "\x00" + example.question
        ids = self._cache.get(key)
        if ids is None:
            ids = self.tokenizer.encode(self.text(example), add_bos=True)
            if len(ids) > self.max_prompt_length:
                self.overlong[key] = len(ids)
                ids = ids[-self.max_prompt_length:]
            self._cache[key] = ids
        return ids

    def longest(self, examples: Sequence[Example]) -> int:
        """Length of the longest prompt among `examples` (1 if none)."""
        return max((len(self.ids(e)) for e in examples), default=1)

    def width(self, examples: Sequence[Example], multiple: int = 8) -> int:
        """A padded prompt length that fits every example: the longest rounded up to `multiple`."""
        longest = max(self.longest(examples), 1)
        return min(-(-longest // multiple) * multiple, max(self.max_prompt_length, longest))

    def bucket(self, examples: Sequence[Example]) -> int:
        """The padded prompt length that fits every example: a power of two, at most max_prompt_length."""
        return min(next_pow2(max(self.longest(examples), 1)), self.max_prompt_length)


def completion_ids(tokens: np.ndarray, length: int, eos_ids: Sequence[int]) -> list[int]:
    """The generated ids of one row, without a final EOS."""
    ids = [int(t) for t in tokens[:int(length)]]
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    return ids


def decode_completions(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray, eos_ids: Sequence[int]) -> list[str]:
    """Text of each generated row (up to its length, the final EOS left out)."""
    eos = set(int(e) for e in eos_ids)
    return [tokenizer.decode(completion_ids(tokens[i], lengths[i], eos)) for i in range(len(lengths))]
