"""Prompts to token ids and generated ids back to text, shared by training and evaluation."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.data.example import Example
from engine.prompt import build_prompt


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class PromptEncoder:
    """Builds and tokenizes each example's chat prompt once (cached by example id)."""

    def __init__(self, tokenizer: Any, instructions: str = "", max_prompt_length: int = 256):
        self.tokenizer = tokenizer
        self.instructions = instructions or None
        self.max_prompt_length = max_prompt_length
        self._cache: dict[str, list[int]] = {}

    def text(self, example: Example) -> str:
        return build_prompt(example.question, self.instructions)

    def ids(self, example: Example) -> list[int]:
        """Token ids with BOS; longer prompts keep their last `max_prompt_length` tokens."""
        key = example.id + "\x00" + example.question
        ids = self._cache.get(key)
        if ids is None:
            ids = self.tokenizer.encode(self.text(example), add_bos=True)[-self.max_prompt_length:]
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
