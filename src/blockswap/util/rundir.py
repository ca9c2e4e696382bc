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
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import BlockSwapError

__all__ = ["file_digest", "atomic_file", "write_text_atomic", "write_json_atomic", "config_changes", "read_json",
           "check_recorded", "record"]


def file_digest(path: str | Path, algorithm: str) -> str:
    """The hex digest of a file ("md5", "sha256", ...), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private; ours follow the umask as open() would
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


def check_recorded(
    folder: Path,
    config_name: str,
    wanted: dict[str, Any],
    normalize: Callable[[Any], dict[str, Any]],
    what: str,
    hint: str,
    error: type[BlockSwapError] = BlockSwapError,
    own: tuple[str, ...] = (),
) -> bool:
    """Whether `folder` records a run in `config_name`; a run with other settings is refused (as `error`).

    `normalize` turns a recorded config (possibly of an earlier version) into
    the form `wanted` has, so a setting added since reads as its default. The
    refusal names the settings that differ, then `hint`. A folder without the
    record must be new or empty (but for hidden names and the files in `own`,
    which the run writes just before its record): files this run did not write,
    another command's run or the user's own, are never written over. Writes nothing.
    """
    path = folder / config_name
    if folder.exists() and not folder.is_dir():
        raise BlockSwapError(f"--out {folder} is a file; name a folder")
    if not path.exists():
        if folder.is_dir():
            foreign = sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.name not in own)
            if foreign:
                shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
                raise error(f"--out {folder} holds files this {what} did not write ({shown}) and no {config_name}; "
                            "name a new or empty folder, so nothing there is written over")
        return False
    saved = normalize(read_json(path, f"{what} record"))
    changes = config_changes(saved, wanted)
    if changes:
        if isinstance(saved, dict) and saved.get("data_dir") != wanted.get("data_dir"):
            hint = (f"{hint}; or, to go on with the same data kept elsewhere (another machine), give --data-dir "
                    f"{saved.get('data_dir')} as recorded: a link there to your copy will do")
        raise error(f"{folder} holds a different {what} ({changes}); {hint}")
    return True


def record(folder: Path, config_name: str, wanted: dict[str, Any]) -> None:
    """Record `wanted` as the run `folder` holds, unless it already records one."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / config_name).exists():
        write_json_atomic(folder / config_name, wanted)
