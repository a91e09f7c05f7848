"""Padding buckets: the sizes the sampler pads prompts and batches to, so that a run compiles few programs.

Pure Python: the memory preflight counts with them without importing JAX.
"""

from __future__ import annotations


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def batch_bucket(n: int) -> int:
    """The padded batch size for n rows: powers of two up to 8, then multiples of 8."""
    return next_pow2(n) if n <= 8 else -(-n // 8) * 8
