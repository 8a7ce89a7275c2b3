"""The consumer's inputs: the style image (configured or first sorted), content latents or PNGs.

Images are centre-cropped to the target's aspect ratio and Lanczos-resized, like the producer's.
"""
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def style_image_path(style_dir, name: Optional[str] = None) -> Path:
    """STYLE/images/NAME, or the first image there in sorted order; a one-line error when missing."""
    folder = Path(style_dir) / "images"
    if name is not None:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: style image not found; set consumer.style_image to a file in "
                                    f"{folder} or leave it unset to use the first one")
        return path
    images = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not images:
        raise FileNotFoundError(f"{folder}: no style image ({', '.join(IMAGE_SUFFIXES)}); add one to the "
                                "folder or fix the dataset path")
    return images[0]


def load_image(path, size: Tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) of the image at `path`, centre-cropped to H:W and Lanczos-resized to `size` = (H, W)."""
    from PIL import Image
    height, width = size
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = min(w / width, h / height)
        cw, ch = round(width * scale), round(height * scale)
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
        if im.size != (width, height):
            im = im.resize((width, height), Image.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


def load_latent(path) -> np.ndarray:
    """A producer latent (.npy, already × scaling factor) as fp32 (4, h, w)."""
    z = np.load(path)
    if z.ndim == 4 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 3:
        raise ValueError(f"{path}: expected a latent shaped (4, h, w) or (1, 4, h, w), got {z.shape}; "
                         "regenerate it with the producer")
    return z.astype(np.float32)
