"""Images to pixel values as transformers' slow image processors make them (docs/score.md).

DINOv2's `BitImageProcessor` and CLIP's `CLIPImageProcessor` run the same steps, in NumPy and PIL with
the dtypes transformers uses, so the pixel values are the same bits: the file opened by PIL as the
checker opens it (`Image.open`, then `convert("RGB")` unless already RGB: no EXIF rotation, alpha
dropped, first frame), shortest edge resized with PIL's filter on the uint8 image
(`int(size * long / short)` for the long edge), centre crop (top = (h - crop_h) // 2, zero padding
if the image is smaller), `x.astype(float64) * rescale_factor` cast to float32, `(x - mean) / std` in
float32, channels first. Sizes and constants come from the model folder's `preprocessor_config.json`,
with transformers' defaults (both classes share them) for keys it omits.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import ImageError
from common.score.errors import ScoreFileError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSORS = ("BitImageProcessor", "CLIPImageProcessor", "CLIPFeatureExtractor")


def read_image(path) -> Image.Image:
    """The RGB image the checker's processor sees for file `path` (PIL opening, no EXIF or alpha handling)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image not found; check the results folder")
    try:
        with Image.open(path) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as e:  # unreadable, truncated, not an image, too large: one line, never a crash
        raise ImageError(f"{path}: cannot read the image ({type(e).__name__}: {str(e)[:120]}); "
                         "re-export it as PNG or JPEG") from None


def _size(value, default_to_square: bool, what: str, config: Path) -> dict:
    """transformers' get_size_dict: an int is a square or a shortest edge; dicts must name known sizes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, dict) and (set(value) == {"shortest_edge"} or set(value) == {"height", "width"}) \
            and all(isinstance(v, int) and v > 0 for v in value.values()):
        return value
    raise ScoreFileError(f"{config}: {what}={value!r} is not supported (an int, {{shortest_edge}} or "
                         "{height, width}); fix: restore the model's preprocessor_config.json")


@dataclass(frozen=True)
class ImageProcessor:
    """One slow transformers image processor's settings; call it on an RGB image."""
    size: dict
    crop_size: dict
    resample: int = Image.BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD

    @classmethod
    def from_folder(cls, folder) -> "ImageProcessor":
        """Read `preprocessor_config.json` of a transformers model folder (DINOv2 or CLIP)."""
        path = Path(folder) / "preprocessor_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ScoreFileError(f"{path}: missing (the image preprocessing settings); fix: copy the model "
                                 "folder whole, as the Hugging Face cache holds it") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ScoreFileError(f"{path}: not valid JSON ({e}); fix: restore the model's "
                                 "preprocessor_config.json") from None
        if not isinstance(config, dict):
            raise ScoreFileError(f"{path}: expected a JSON object; fix: restore the model's preprocessor_config.json")
        kind = config.get("image_processor_type") or config.get("feature_extractor_type")
        if kind is not None and str(kind).removesuffix("Fast") not in PROCESSORS:
            raise ScoreFileError(f"{path}: image processor {kind!r} is not supported (need one of "
                                 f"{', '.join(PROCESSORS)}); fix: use the DINOv2 or CLIP model folder")
        settings = {k: config[k] for k in ("resample", "do_resize", "do_center_crop", "do_rescale",
                                           "rescale_factor", "do_normalize") if k in config}
        for key in ("image_mean", "image_std"):
            if key in config:
                value = config[key]
                settings[key] = tuple(value) if isinstance(value, list) and len(value) == 3 else (value,) * 3
        size = _size(config.get("size", {"shortest_edge": 224}), False, "size", path)
        crop_size = _size(config.get("crop_size", 224), True, "crop_size", path)
        processor = cls(size=size, crop_size=crop_size, **settings)
        try:  # every number a number, the filter one PIL knows: later failures would be mid-score
            [float(v) for v in (processor.rescale_factor, *processor.image_mean, *processor.image_std)]
            Image.Resampling(processor.resample)
        except (TypeError, ValueError) as e:
            raise ScoreFileError(f"{path}: unusable value ({e}); fix: restore the model's "
                                 "preprocessor_config.json") from None
        return processor

    def resized(self, image: Image.Image) -> Image.Image:
        if "shortest_edge" in self.size:
            short, long = sorted(image.size)
            new_short, new_long = self.size["shortest_edge"], int(self.size["shortest_edge"] * long / short)
            width, height = (new_short, new_long) if image.width <= image.height else (new_long, new_short)
        else:
            height, width = self.size["height"], self.size["width"]
        return image.resize((width, height), resample=self.resample)

    def cropped(self, pixels: np.ndarray) -> np.ndarray:
        """Centre crop of (h, w, c) pixels; an image smaller than the crop is zero-padded around it first."""
        h, w = pixels.shape[:2]
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        if ch > h or cw > w:
            ph, pw = max(ch, h), max(cw, w)
            padded = np.zeros((ph, pw) + pixels.shape[2:], pixels.dtype)
            top, left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
            padded[top:top + h, left:left + w] = pixels
            pixels, h, w = padded, ph, pw
        top, left = (h - ch) // 2, (w - cw) // 2
        return pixels[top:top + ch, left:left + cw]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, crop_h, crop_w) float32 pixel values of an RGB image."""
        if self.do_resize:
            image = self.resized(image)
        pixels = np.array(image)
        if self.do_center_crop:
            pixels = self.cropped(pixels)
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            pixels = pixels.astype(np.float32) if not np.issubdtype(pixels.dtype, np.floating) else pixels
            mean, std = (np.array(v, dtype=pixels.dtype) for v in (self.image_mean, self.image_std))
            pixels = (pixels - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32, copy=False)

    def batch(self, paths) -> np.ndarray:
        """(N, 3, crop_h, crop_w) float32 pixel values of image files."""
        return np.stack([self(read_image(p)) for p in paths])
