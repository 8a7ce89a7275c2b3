"""Read any image file as the 8-bit RGB picture a viewer shows, or fail in one line naming the file and the fix.

`Image.convert("RGB")` alone is wrong for some modes: it clips 16-bit and float pixels (a mid-grey 16-bit
PNG comes out near white) and drops alpha (transparent pixels, often stored black, show as black).
Here high-depth grey is scaled to 8 bits, transparency is composited on white (as on a page; no viewer
shows the black a cut-out's transparent pixels usually store), and the EXIF orientation is applied
(phones store photos sideways plus a tag; viewers show them upright). Multi-frame files give their first
frame. Pillow does the decoding; only the formats below are opened, so nothing is handed to an
external program (Pillow gives EPS to Ghostscript).
"""
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from common.naming import one_line

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA")
_FIX = "re-export it as PNG or JPEG"


class ImageError(ValueError):
    """An image file that cannot be used (message names the file and the fix)."""


def open_rgb(path, max_pixels: Optional[int] = None) -> Image.Image:
    """The image at `path` as an 8-bit RGB image, upright and without alpha; `max_pixels` (default
    Pillow's `Image.MAX_IMAGE_PIXELS`, about 89 M; it cannot exceed twice that) is checked from the header
    before any decoding."""
    return _read(Path(path), max_pixels, draft=False)


def verify_image(path, max_pixels: Optional[int] = None) -> None:
    """Raise ImageError for any file `open_rgb` would refuse, cheaply: JPEGs decode at 1/8 scale (every
    byte is still read), other formats at full size but never above `max_pixels`."""
    _read(Path(path), max_pixels, draft=True)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of an image in any Pillow mode (see the module docstring for the choices)."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit grey; Pillow's 32-bit I holds 16-bit PGM/TIFF data
        return _grey(np.asarray(image, np.float32) / 257)
    if mode == "F":  # float grey, 0..1 as float image formats store it
        return _grey(np.nan_to_num(np.asarray(image, np.float32)) * 255)
    if mode in ("La", "RGBa"):  # premultiplied alpha
        image = image.convert(mode[:-1] + "A")
    if "A" in image.getbands() or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(levels, 0, 255).round().astype(np.uint8)).convert("RGB")


def _read(path: Path, max_pixels: Optional[int], draft: bool) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: image not found; check the path")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file, not an image; {_FIX}")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():  # Pillow warns past its limit; ours below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                width, height = im.size
                if limit is not None and width * height > limit:
                    raise ImageError(f"{path}: image of {width}x{height} pixels is too large (limit {limit} "
                                     "pixels); downscale it")
                im.verify()  # PNG: every chunk's checksum, without decompressing
            with Image.open(path, formats=FORMATS) as im:
                if draft:
                    im.draft(im.mode, (1, 1))
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image is too large ({one_line(e)}); downscale it") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image ({' '.join(FORMATS)}); {_FIX}") from None
    except Exception as e:  # damaged files fail deep inside the decoders
        raise ImageError(f"{path}: cannot read the image ({type(e).__name__}: {one_line(e)}); the file is "
                         f"damaged or truncated: {_FIX} or copy it again") from None

