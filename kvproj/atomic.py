"""Atomic writes: every file and folder kvproj produces (checkpoints, exported projectors, results, corpora, zoo
files) appears whole or not at all. A temp file in the same folder, flushed and fsynced, renamed over the
destination; on any failure the temp file is removed and the destination keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


def _explain(err: OSError, path: Path, advice: str | None = None) -> OSError:
    """Name the file and what to do when the disk is full or the folder is read-only. `advice`, when given,
    replaces the generic advice (and explains any other write error too)."""
    reason = err.strerror or str(err)
    if advice is not None:
        return OSError(err.errno, f"cannot write {path}: {reason}; {advice}")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(err.errno, f"no space left writing {path}: free space there or write elsewhere")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OSError(err.errno, f"cannot write {path} ({reason}): choose a writable folder")
    return err


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."  # + mkstemp's random part + ".tmp"


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")  # a replaced folder, until the new one is in place


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8", advice: str | None = None
) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on a clean exit it is fsynced and renamed onto `path`.

    `mode` is "w" (text) or "wb" (bytes). The file gets the usual permissions (umask), not mkstemp's 0600.
    `advice`: what to do when the write fails (an OSError then names `path`, the reason and this advice).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _explain(err, path, advice) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` (text or bytes) to `path` atomically. Returns the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a temp folder beside `path`; on a clean exit it replaces `path` (the old folder is removed only
    after the new one is in place). On failure the temp folder is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = _old_name(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain(err, path) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(folder: str | os.PathLike[str]) -> None:
    """Undo what a process killed in the middle of an atomic write left in `folder`: a folder moved aside
    (`.X.old`) goes back to X when X is missing (killed between atomic_directory's two renames) and is removed
    otherwise; temp files and folders (`.X.*.tmp`, never a complete write) are removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for old in folder.glob(".*.old"):
        original = folder / old.name[1 : -len(".old")]
        if not original.exists():
            os.replace(old, original)
        elif old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
