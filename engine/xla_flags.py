"""XLA flags the engine sets for itself, before JAX starts its backend (pure Python: nothing is imported).

jaxlib 0.10.2's CPU backend hands dots to YNNPACK, whose AVX-512 fp32 dot kernel writes through a null pointer in
the backward pass of the model over larger batches (measured here: the 270M's GRPO update segfaults from 24
completions a step; the tiny model's from 3 prompts of 256 tokens x 8 completions). Turning YNNPACK fusions off
(`--xla_cpu_experimental_ynn_fusion_type=`, an empty list) makes XLA use its own kernels. Other jaxlib versions
may not know the flag (XLA stops on an unknown one), so it is set only for the versions it was checked on, and
never when the user's XLA_FLAGS already says something about it.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import MutableMapping

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_CHECKED_JAXLIB = frozenset({"0.10.2"})   # where the flag exists and turning YNNPACK off was measured


def jaxlib_version() -> str | None:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def with_workarounds(flags: str, jaxlib: str | None) -> str:
    """`flags` (an XLA_FLAGS value) with YNNPACK off when `jaxlib` is a checked version and `flags` leaves it be."""
    if jaxlib not in YNN_CHECKED_JAXLIB or YNN_FLAG.lstrip("-") in flags:
        return flags
    return f"{flags} {YNN_FLAG}=".strip()


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the workarounds in `environ["XLA_FLAGS"]` (read by XLA when JAX first uses a backend)."""
    flags = with_workarounds(environ.get("XLA_FLAGS", ""), jaxlib_version())
    if flags:
        environ["XLA_FLAGS"] = flags
