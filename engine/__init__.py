"""The GRPO engine. Importing it sets the XLA flags it needs (engine.xla_flags) before JAX starts a backend."""

from engine import xla_flags as _xla_flags

_xla_flags.apply()
