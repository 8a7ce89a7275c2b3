"""Images as the checker's libraries see them: the stored pixels, no EXIF turn, alpha dropped.

The checker opens files with PIL (`Image.open`, then `ToTensor` or a resize) or `cv2.imread`; for 8-bit
RGB and RGBA files both give the stored RGB values, which is what this returns. (The pipeline's own
reader, `common.images.open_rgb`, composites transparency on white and applies EXIF orientation, as a
viewer shows a picture; the score must see what the checker sees instead.)
"""
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import FORMATS, ImageError


def open_as_checker(path) -> Image.Image:
    """The RGB image at `path`; one-line ImageError naming the file if it is missing or does not decode."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image not found; check the results or dataset folder")
    try:
        with Image.open(path, formats=FORMATS) as image:
            image.load()
            return image.convert("RGB")
    except Exception as e:  # damaged files fail deep inside the decoders
        reason = " ".join(str(e).split())[:160]
        raise ImageError(f"{path}: cannot read the image ({type(e).__name__}: {reason}); the file is damaged "
                         "or not an image: write or copy it again") from None


def pixels_as_checker(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of `open_as_checker(path)`."""
    return np.asarray(open_as_checker(path), np.uint8)
