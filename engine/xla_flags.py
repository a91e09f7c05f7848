"""XLA flags the engine sets for itself, before JAX starts its backend (pure Python: JAX is not imported here).

jaxlib 0.10.2's CPU backend hands fused dots to YNNPACK, whose AVX-512 fp32 dot kernel writes through a null pointer
in the backward pass of the model over larger batches (measured here: the 270M's GRPO update segfaults from 24
completions a step; the tiny model's from 3 prompts of 256 tokens x 8 completions). Keeping YNNPACK to single dots
(`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`) avoids it for little speed (measured
alternately against the default: sampler batch 8, 133 vs 134 tok/s; GRPO step bench 8.76 vs 8.47 s; YNNPACK off
altogether: 120 tok/s). Other jaxlib versions may not know the flag (XLA stops on an unknown one), so it is set only
for the versions it was checked on, and never when the user's XLA_FLAGS already says something about it.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import MutableMapping

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
YNN_CHECKED_JAXLIB = frozenset({"0.10.2"})   # where the flag exists and the workaround was measured


def jaxlib_version() -> str | None:
    """The installed jaxlib's version (None when it is not installed): from the name of the `jaxlib-VERSION.dist-info`
    folder an installer puts beside the package, else from its package metadata. The folder is looked up first
    because every process that imports `engine` comes here, the console's too, and `importlib.metadata` alone takes
    tens of milliseconds to import."""
    spec = find_spec("jaxlib")
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or ():
        infos = sorted(Path(folder).parent.glob("jaxlib-*.dist-info"))
        if len(infos) == 1:
            return infos[0].name.removeprefix("jaxlib-").removesuffix(".dist-info")
    from importlib import metadata
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None


def with_workarounds(flags: str, jaxlib: str | None) -> str:
    """`flags` (an XLA_FLAGS value) with YNNPACK kept to single dots when `jaxlib` is a checked version and `flags`
    leaves it be."""
    if jaxlib not in YNN_CHECKED_JAXLIB or YNN_FLAG.lstrip("-") in flags:
        return flags
    return f"{flags} {YNN_FLAG}={YNN_FUSIONS}".strip()


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the workarounds in `environ["XLA_FLAGS"]` (read by XLA when JAX first uses a backend)."""
    flags = with_workarounds(environ.get("XLA_FLAGS", ""), jaxlib_version())
    if flags:
        environ["XLA_FLAGS"] = flags
