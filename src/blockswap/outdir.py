"""Output folders: atomic file writes, and claiming a folder for one run so a rerun resumes it.

Search and training share the protocol: the first run records its settings
(`search.json`, `config.json`); a later run with the same settings resumes,
and one with other settings is refused with the settings that differ.
Every file is written to a unique temporary name beside it, flushed to disk
and renamed over the target, so a kill at any moment leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import BlockSwapError

__all__ = ["atomic_file", "write_text_atomic", "write_json_atomic", "config_changes", "read_json", "claim"]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object that replaces `path` when the block ends without error, and vanishes otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically."""
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Replace `path` with `data` as indented standard JSON (NaN and infinities refused)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`; BlockSwapError naming `what` it should hold when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BlockSwapError(f"{path} is not a readable {what} ({e}); use a fresh --out directory") from None


def config_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """"key: old -> new, ..." for the settings an output folder's saved config does not share; "" if none."""
    keys = list(wanted) + [k for k in saved if k not in wanted]
    return ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k))


def claim(
    folder: Path,
    config_name: str,
    wanted: dict[str, Any],
    normalize: Callable[[Any], dict[str, Any]],
    what: str,
    hint: str,
) -> bool:
    """Make `folder` this run's: record `wanted` in `config_name`, or check the one recorded there.

    `normalize` turns a recorded config (possibly of an earlier version) into
    the form `wanted` has, so a setting added since reads as its default.
    Returns whether the folder already held this run. A folder holding a
    different run is refused naming the settings that differ, then `hint`.
    """
    path = folder / config_name
    if path.exists():
        saved = normalize(read_json(path, f"{what} record"))
        changes = config_changes(saved, wanted)
        if changes:
            raise BlockSwapError(f"{folder} holds a different {what} ({changes}); {hint}")
        return True
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, wanted)
    return False
