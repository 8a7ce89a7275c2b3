"""Where a style's files are: its training images, its reference image (for StyleID) and its DreamBooth
LoRA (config.lora).

Jittor-free, so the launcher can check a dataset before any worker loads a model: a missing file is then a
one-line error at launch, not a job that fails max_attempts times.
"""
from pathlib import Path
from typing import Optional

from common.config import RunConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def training_images(style_dir) -> list:
    """STYLE/images/* with an image suffix, sorted; a one-line error when there are none."""
    folder = Path(style_dir) / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; a style folder must hold images/ with its training images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no training images ({', '.join(IMAGE_SUFFIXES)}); add some or fix the path")
    return files


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


def lora_folder(config: RunConfig, style: str) -> Path:
    """lora.dir / lora.subdir with the style's name filled in; with `train.pack` every style's is the one
    packed LoRA's folder, lora.dir / pack (common/pack.py)."""
    if config.train.pack:
        from common.pack import PACK_DIR
        return Path(config.lora.dir) / PACK_DIR
    return Path(config.lora.dir) / config.lora.subdir.format(style=style)


def lora_path(config: RunConfig, style: str) -> Optional[Path]:
    """The style's LoRA file (first existing of lora.names), or None when there is none."""
    folder = lora_folder(config, style)
    for name in config.lora.names:
        if (folder / name).is_file():
            return folder / name
    return None


def missing_lora_message(config: RunConfig, style: str, fatal: bool = True) -> str:
    """One line naming the folder searched and the fix (not fatal: what happens instead)."""
    missing = f"{lora_folder(config, style)}: no LoRA for style {style} (looked for {' or '.join(config.lora.names)})"
    if not fatal:
        return f"{missing}; using the base model (lora.missing: warn)"
    if config.lora.missing == "train":
        missing += " although lora.missing is train (the train stage writes it before generation)"
    return (f"{missing}; set lora.missing: train to train it here (python -m producer.train trains one style), "
            f"fix lora.dir in {config.source or 'the config'}, or set lora.missing: warn to use the base model")
