"""Write a file so that a reader sees the old state or the whole new file, never a half-written one.

Write to a unique temporary name in the target's own folder (a rename across filesystems fails), flush,
fsync, rename over the target, and fsync the folder so the rename itself is durable. Every record the
queue writes goes through here; so do the stages' outputs (common/atomic.py), which are placed `once`.
"""
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: files are created 0600 by mkstemp, then given the mode any tool would give


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data: bytes, *, fsync: bool, tmp_dir=None, once=None) -> Path:
    """Atomically replace `path` with `data`; `fsync` (config queue.fsync) makes it durable too.

    The temp file is `.<name>.<pid>.<random>.tmp` in the target's folder, or in `tmp_dir` (on the same
    filesystem), so a crash leaves a file that recovery can attribute to its dead writer.
    `once(path) -> bool` (is the file there whole?) places the file only if no whole one is there yet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if once is None:
            os.replace(tmp, path)
        else:
            _place_once(tmp, path, once)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def _place_once(tmp: str, path: Path, whole):
    """Give `tmp` the name `path` unless a whole file has it already (link: only one writer can win)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        if not whole(path):
            os.replace(tmp, path)
            return
    os.unlink(tmp)
