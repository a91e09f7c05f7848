"""A fast reader of the GGUF container: metadata, tensor directory, and memory-mapped raw tensor bytes.

`gguf.GGUFReader` builds one numpy view per element of every metadata array, which takes 10-30 s for Gemma's
262,144-entry vocabulary; this reader parses the same header in well under a second. Tensor bytes are returned in
the layout `gguf.quants.dequantize` expects (uint8 rows), so dequantization stays the `gguf` package's.
Little-endian GGUF version 2 and 3.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.weights.errors import WeightsError

DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the directory: numpy-order shape (the header's reversed), ggml type, byte range."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int   # absolute, in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf: Any, origin: str):
        self.buf, self.pos, self.origin = buf, 0, origin

    def scalar(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise WeightsError(f"{self.origin}: not a readable GGUF file (header ends early)") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        end = self.pos + n
        if end > len(self.buf):
            raise WeightsError(f"{self.origin}: not a readable GGUF file (string past the end)")
        text = bytes(self.buf[self.pos:end]).decode("utf-8", errors="replace")
        self.pos = end
        return text

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS:
                dtype = np.dtype(_SCALARS[item])
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise WeightsError(f"{self.origin}: not a readable GGUF file (array past the end)")
                out = np.frombuffer(self.buf, dtype, count, self.pos).copy()
                self.pos = end
                return out
            return [self.value(item) for _ in range(count)]
        raise WeightsError(f"{self.origin}: not a readable GGUF file (unknown value type {kind})")


@dataclass
class GGUFFile:
    """Metadata and tensor directory of a GGUF file, with its bytes memory-mapped."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    _map: mmap.mmap

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows ([..., bytes per row]), a view of the mapped file."""
        rows = t.shape[:-1] if len(t.shape) > 1 else ()
        return np.frombuffer(self._map, np.uint8, t.nbytes, t.offset).reshape(*rows, -1)

    def close(self) -> None:
        """Release the mapping (arrays from `raw` must not be used afterwards)."""
        self._map.close()


def read_gguf_file(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file; raise WeightsError naming the file when it is not one."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    p = Path(path)
    origin = str(p)
    with p.open("rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise WeightsError(f"{origin}: not a readable GGUF file (empty)") from None
    cur = _Cursor(mapped, origin)
    if len(mapped) < 24 or bytes(mapped[:4]) != b"GGUF":
        raise WeightsError(f"{origin}: not a readable GGUF file (no GGUF magic)")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise WeightsError(f"{origin}: not a readable GGUF file (version {version}; 2 and 3 are supported, "
                           "little-endian)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        kind, offset = cur.scalar("<I"), cur.scalar("<Q")
        infos.append((name, tuple(int(d) for d in reversed(dims)), kind, offset))
    align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // align) * align
    tensors = []
    for name, shape, kind, offset in infos:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise WeightsError(f"{origin}: tensor {name!r} has an unknown ggml type {kind}") from None
        count = int(np.prod(shape)) if shape else 1
        nbytes = count // block * type_size
        start = data_start + offset
        if start + nbytes > len(mapped):
            raise WeightsError(f"{origin}: tensor {name!r} runs past the end of the file (truncated download?)")
        tensors.append(TensorInfo(name, shape, kind, start, nbytes))
    return GGUFFile(p, version, metadata, tensors, mapped)
