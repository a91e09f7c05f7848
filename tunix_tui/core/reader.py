"""Reading a growing event file in big chunks, line by line, with each line's byte offset.

Unlike `engine.protocol.EventReader` this does not parse lines: the run state decides which lines to parse now and
which to index by offset and parse only when shown (sample texts), which keeps attaching to a long run fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

@dataclass
class Chunk:
    """Complete lines read in one go; the first starts at file offset `start`, each next one after the newline
    of the one before."""
    lines: list[bytes]
    start: int
    end: int  # file offset after the last complete line
    size: int  # file size seen
    reset: bool = False  # the file shrank or was replaced: everything before is void


@dataclass
class LineReader:
    """Follows a file from a byte offset; a partial last line waits for its newline."""
    path: Path
    offset: int = 0  # next byte to read
    missing: bool = False
    problem: str = ""
    _pending: bytes = field(default=b"", repr=False)
    _inode: int | None = field(default=None, repr=False)

    @property
    def position(self) -> int:
        """File offset of the first byte not yet returned as part of a complete line."""
        return self.offset - len(self._pending)

    def size(self) -> int | None:
        """Current size of the file, or None when it is gone."""
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def read(self, max_bytes: int = 8 << 20) -> Chunk:
        """The complete lines from the current position, up to about `max_bytes`."""
        reset = False
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_size < self.offset or (self._inode is not None and st.st_ino != self._inode):
                    self.offset, self._pending, reset = 0, b"", True
                self._inode = st.st_ino
                fh.seek(self.offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            self.missing, self.problem = True, "the event file is gone"
            return Chunk([], self.position, self.position, 0)
        except OSError as exc:
            self.missing, self.problem = True, f"cannot read the event file: {exc}"
            return Chunk([], self.position, self.position, 0)
        self.missing = False
        start = self.position
        self.offset += len(data)
        if not data:
            return Chunk([], start, start, st.st_size, reset)
        buf = self._pending + data if self._pending else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._pending = buf
            return Chunk([], start, start, st.st_size, reset)
        self._pending = buf[cut + 1:]
        return Chunk(buf[:cut].split(b"\n"), start, start + cut + 1, st.st_size, reset)


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
