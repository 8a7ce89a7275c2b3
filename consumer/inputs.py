"""The sty stage's inputs: images (the style's, or outside content PNGs) and content latents.

Images are read as the RGB a viewer shows (`common.images`: any mode, upright, transparency on white),
centre-cropped to the target's aspect ratio and Lanczos-resized, like the gen stage's.
"""
from typing import Tuple

import numpy as np

from common.images import open_rgb


def load_image(path, size: Tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) of the image at `path`, centre-cropped to H:W and Lanczos-resized to `size` = (H, W);
    a file that is not a usable image raises `common.images.ImageError` (one line)."""
    from PIL import Image
    height, width = size
    im = open_rgb(path)
    w, h = im.size
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    im = im.crop((left, top, left + cw, top + ch))
    if im.size != (width, height):
        im = im.resize((width, height), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def load_latent(path) -> np.ndarray:
    """A gen stage latent (.npy, already × scaling factor) as fp32 (4, h, w)."""
    z = np.load(path)
    if z.ndim == 4 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 3:
        raise ValueError(f"{path}: expected a latent shaped (4, h, w) or (1, 4, h, w), got {z.shape}; "
                         "regenerate it with the gen stage")
    return z.astype(np.float32)
