"""A stage's outputs, written whole or not at all (`write_bytes`, the queue's atomic write: temp file in
the target's folder, flush, fsync, rename, fsync the folder), and cheap checks that one is whole.

A stage's output is a pure function of its task, so `write_png` and `write_npy` place it once: the temp
file is `link`ed to the target and the first whole file wins (EEXIST: another writer's is there, ours is
dropped). A worker that was thought dead and writes late can then never replace a newer output
(docs/queue.md §10); a target that exists but is not whole (a power loss) is replaced.
"""
import io
import os
from pathlib import Path

import numpy as np

from common.jobqueue.atomic import write_bytes

__all__ = ["write_bytes", "write_png", "write_npy", "png_is_complete", "npy_is_complete"]


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
