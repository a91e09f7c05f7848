"""Lines of an event file read where they lie, without parsing them: the step a line names, and the one line at
a byte offset (a sample's text, parsed only when shown). The event file itself is followed in blocks of complete
lines by `engine.protocol.LineReader`, which the run state scans in place."""

from __future__ import annotations

from pathlib import Path


def line_step(line: bytes) -> int | None:
    """The `"step": N` named near the start of a line, without parsing it."""
    i = line.find(b'"step":', 0, 200)
    if i < 0:
        return None
    i += 7
    j = i
    n = len(line)
    while j < n and line[j] in b" \t":
        j += 1
    k = j
    while k < n and 0x30 <= line[k] <= 0x39:
        k += 1
    return int(line[j:k]) if k > j else None


def read_line_at(path: Path, offset: int, limit: int = 64 << 20) -> bytes | None:
    """The line starting at `offset` (without its newline), or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            line = fh.readline(limit)
    except OSError:
        return None
    return line.rstrip(b"\n") if line.endswith(b"\n") else None
