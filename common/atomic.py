"""Write files so that a reader sees the old state or the whole new file, never a half-written one.

Write to a unique temporary name in the target's own folder (a rename across filesystems fails), flush,
fsync, rename over the target, and fsync the folder so the rename itself is durable.

A stage's output is a pure function of its task, so `write_png` and `write_npy` place it once: the temp
file is `link`ed to the target and the first whole file wins (EEXIST: another writer's is there, ours is
dropped). A worker that was thought dead and writes late can then never replace a newer output
(docs/queue.md §10); a target that exists but is not whole (a power loss) is replaced.
"""
import io
import os
import tempfile
from pathlib import Path

import numpy as np

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


def write_png(path, image, *, fsync: bool, replace: bool = False) -> Path:
    """Atomically write a PIL image or a uint8 (H,W,3) array as PNG; a whole PNG already at `path` is
    kept unless `replace` (a stage output is placed once, see above)."""
    from PIL import Image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue(), fsync=fsync, once=None if replace else png_is_complete)


def write_npy(path, array: np.ndarray, *, fsync: bool, replace: bool = False) -> Path:
    """Atomically write a NumPy array (.npy); a whole one already at `path` is kept unless `replace`."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return write_bytes(path, buf.getvalue(), fsync=fsync, once=None if replace else npy_is_complete)


def png_is_complete(path) -> bool:
    """Cheap validity check of a PNG: signature and a final IEND chunk (a truncated write fails it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head != b"\x89PNG\r\n\x1a\n":
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12)[4:8] == b"IEND"
    except OSError:
        return False


def npy_is_complete(path) -> bool:
    """Cheap validity check of a .npy file: its header parses and the file holds all the data it declares."""
    try:
        np.load(path, mmap_mode="r")
        return True
    except (OSError, ValueError):
        return False
