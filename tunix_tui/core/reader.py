"""Reading a growing event file in big blocks of complete lines.

Unlike `engine.protocol.EventReader` this does not parse lines, nor even split them: a `Chunk` is one block of bytes
that ends with a newline, and the run state scans it in place, parsing only the lines it needs now and indexing
others by byte offset (sample texts are parsed only when shown). That keeps attaching to a long run fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Chunk:
    """Complete lines read in one go: `data[:length]`, which starts at file offset `start` and ends with a
    newline (nothing when `length` is 0)."""
    data: bytes
    length: int
    start: int
    size: int  # file size seen
    reset: bool = False  # the file shrank or was replaced: everything before is void

    @property
    def end(self) -> int:
        """File offset after the last complete line."""
        return self.start + self.length

    @property
    def lines(self) -> list[bytes]:
        """The lines, without their newlines (a copy; the run state scans `data` instead)."""
        return self.data[:self.length - 1].split(b"\n") if self.length else []


@dataclass
class LineReader:
    """Follows a file from a byte offset; a partial last line waits for its newline (and is read again then)."""
    path: Path
    offset: int = 0  # end of the bytes read so far (a partial last line included)
    missing: bool = False
    problem: str = ""
    inode: int | None = None  # of the file read so far (another one means it was replaced: read from its start)
    _position: int | None = field(default=None, repr=False)

    @property
    def position(self) -> int:
        """File offset of the first byte not yet returned as part of a complete line."""
        return self.offset if self._position is None else self._position

    def size(self) -> int | None:
        """Current size of the file, or None when it is gone."""
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    def read(self, max_bytes: int = 8 << 20) -> Chunk:
        """The complete lines from the current position, up to about `max_bytes` (more when a single line is
        longer)."""
        reset = False
        start = self.position
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_size < self.offset or (self.inode is not None and st.st_ino != self.inode):
                    start, reset = 0, True
                self.inode = st.st_ino
                fh.seek(start)
                data = fh.read(max_bytes)
                cut = data.rfind(b"\n")
                while cut < 0 and len(data) >= max_bytes:  # one line longer than a block: read on to its end
                    more = fh.read(max_bytes)
                    if not more:
                        break
                    data += more
                    cut = more.rfind(b"\n")
                    if cut >= 0:
                        cut += len(data) - len(more)
        except FileNotFoundError:
            self.missing, self.problem = True, "the event file is gone"
            return Chunk(b"", 0, self.position, 0)
        except OSError as exc:
            self.missing, self.problem = True, f"cannot read the event file: {exc}"
            return Chunk(b"", 0, self.position, 0)
        self.missing = False
        length = cut + 1
        self._position = start + length
        self.offset = start + len(data)
        return Chunk(data, length, start, st.st_size, reset)


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
