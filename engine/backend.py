"""The backend the engine runs on, and which of the layouts tuned for one backend to use.

The sampler's re-laid-out weights, its vocabulary-major logits (with the blocked normaliser and key-major top-k
that read them) and the blocked `probs @ embedding` of the log-probability gradient were each measured faster on
XLA's CPU backend only. On GPU and TPU the compiler's own layouts of the plain forms are used instead, so nothing
tuned for the CPU slows an accelerator. The backend is fixed for a process, so the choice is made when a program is
traced.
"""

from __future__ import annotations

import jax


def platform() -> str:
    """`cpu`, `gpu` or `tpu` (JAX's default backend)."""
    return jax.default_backend()


def cpu_layouts() -> bool:
    """Whether to use the layouts tuned for XLA's CPU backend."""
    return platform() == "cpu"
