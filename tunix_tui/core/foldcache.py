"""A persistent cache of folded run states: attaching again to a long run folds only what was written since.

The cache lives in the user's cache folder (`engine.userdirs.cache_dir()` / `folds`: `$TUNIX_TUI_CACHE`, else the
platform's, e.g. `~/.cache/tunix-tui`), never in the run directory: one private file per event stream, named after a
hash of the stream's real path, holding the state folded up to a byte offset. It is used only for the same file
(device and inode), at least that long, with the same bytes at its start and just before that offset, folded by the
same code with the same history settings. Files are replaced atomically and read back with an unpickler that accepts
only the run state's own classes; the newest `keep` files stay.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from tunix_tui.core import history as _history
from tunix_tui.core import reader as _reader
from tunix_tui.core import runstate as _runstate
from tunix_tui.core.runstate import PARTS, RunState

_WINDOW = 4096  # bytes compared at the start of the stream and before the cached offset
_code_id: str | None = None

# what a folded state is made of: anything else in a cache file is refused
_ALLOWED = {
    ("tunix_tui.core.runstate", "RunState"), ("tunix_tui.core.runstate", "SampleStore"),
    ("tunix_tui.core.runstate", "EvalPoint"), ("tunix_tui.core.runstate", "FeedLine"),
    ("tunix_tui.core.runstate", "Pending"), ("tunix_tui.core.history", "StepHistory"),
    ("collections", "deque"), ("collections", "OrderedDict"), ("array", "array"), ("array", "_array_reconstructor"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
}


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"not part of a folded run state: {module}.{name}")
        return super().find_class(module, name)


def default_dir() -> Path:
    """The user's cache folder for folded states."""
    from engine.userdirs import cache_dir

    return cache_dir() / "folds"


def _code() -> str:
    """A fingerprint of the code that folds (a cached state from other code is not used)."""
    global _code_id
    if _code_id is None:
        h = hashlib.sha256(sys.version.encode())
        for module in (_reader, _runstate, _history, sys.modules[__name__]):
            h.update(Path(module.__file__ or "").read_bytes())
        _code_id = h.hexdigest()
    return _code_id


def cache_file(directory: Path, events: Path, suffix: str = ".fold") -> Path:
    """The file in `directory` that caches what was read of the event stream `events` (named by its real path)."""
    return directory / (hashlib.sha256(os.fsencode(os.path.realpath(events))).hexdigest()[:32] + suffix)


def stream_fingerprint(fh: Any, position: int) -> tuple[str, str]:
    """Hashes of an event stream's first bytes and of the bytes before `position`: a cache made at `position` is
    used only while both still match (the stream was not replaced or rewritten)."""
    fh.seek(0)
    head = hashlib.sha256(fh.read(min(_WINDOW, position))).hexdigest()
    fh.seek(max(0, position - _WINDOW))
    tail = hashlib.sha256(fh.read(position - max(0, position - _WINDOW))).hexdigest()
    return head, tail


def _settings(state: RunState) -> tuple[Any, ...]:
    return (state.history_capacity, state.history_metrics)


def save(directory: Path, events: Path, state: RunState, position: int, keep: int = 16,
         lock: AbstractContextManager[Any] | None = None) -> bool:
    """Store `state`, folded from the lines of `events` before byte `position` (pickled while holding `lock`);
    False when it could not be written (the cache is only a shortcut: nothing fails for want of it)."""
    try:
        with open(events, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size < position:
                return False
            head, tail = stream_fingerprint(fh, position)
        header = {"code": _code(), "path": os.path.realpath(events), "dev": st.st_dev, "ino": st.st_ino,
                  "position": position, "head": head, "tail": tail, "settings": _settings(state)}
        with lock or nullcontext():
            body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        body = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL) + body
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = cache_file(directory, events)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except Exception:  # noqa: BLE001 - whatever keeps it from being written, the console goes on without it
        return False
    _prune(directory, keep)
    return True


def load(directory: Path, events: Path, like: RunState) -> tuple[RunState, int, int] | None:
    """The cached state of `events` (folded with the same settings as `like`), the offset after its last folded
    line and the inode of the file; None when there is none that still fits the file."""
    path = cache_file(directory, events)
    try:
        st = os.stat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:  # only the user's own, unshared files
            return None
        stream = io.BytesIO(path.read_bytes())
        header = _StateUnpickler(stream).load()
        if not isinstance(header, dict) or header.get("code") != _code() or \
                header.get("path") != os.path.realpath(events) or header.get("settings") != _settings(like):
            return None
        position = header["position"]
        with open(events, "rb") as fh:
            ev = os.fstat(fh.fileno())
            if (ev.st_dev, ev.st_ino) != (header["dev"], header["ino"]) or ev.st_size < position or \
                    stream_fingerprint(fh, position) != (header["head"], header["tail"]):
                return None
        state = _StateUnpickler(stream).load()
    except (OSError, EOFError, KeyError, TypeError, ValueError, AttributeError, ImportError, IndexError,
            pickle.UnpicklingError, RecursionError):
        return None
    if not isinstance(state, RunState) or not isinstance(position, int):
        return None
    # what the console that saved it added is not the stream's: commands it waited for, its engine checks
    state.pending = {}
    state.alive, state.gone, state.engine_log = None, False, []
    state.events_path = state.samples.path = events
    state.history_from = None
    state.dirty = set(PARTS)
    return state, position, ev.st_ino


def forget(directory: Path, events: Path) -> None:
    """Drop the cached state of `events` (its run is being deleted)."""
    try:
        cache_file(directory, events).unlink(missing_ok=True)
    except OSError:
        pass


def _prune(directory: Path, keep: int) -> None:
    try:
        files = sorted(directory.glob("*.fold"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
