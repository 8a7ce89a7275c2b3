"""Where a style's files are: its reference image (for StyleID) and its DreamBooth LoRA (for the producer).

Jittor-free, so the launcher can check a dataset before any worker loads a model: a missing file is then a
one-line error at launch, not a job that fails max_attempts times.
"""
from pathlib import Path
from typing import Optional

from common.config import RunConfig

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


def lora_path(config: RunConfig, style: str) -> Optional[Path]:
    """The style's LoRA file (first existing of producer.lora_names), or None when there is none."""
    p = config.producer
    folder = Path(p.lora_dir) / p.lora_subdir.format(style=style)
    for name in p.lora_names:
        if (folder / name).is_file():
            return folder / name
    return None


def missing_lora_message(config: RunConfig, style: str, fatal: bool = True) -> str:
    """One line naming the folder searched and the fix (not fatal: what happens instead)."""
    p = config.producer
    folder = Path(p.lora_dir) / p.lora_subdir.format(style=style)
    missing = f"{folder}: no LoRA for style {style} (looked for {' or '.join(p.lora_names)})"
    if not fatal:
        return f"{missing}; generating with the base model (producer.missing_lora: warn)"
    return (f"{missing}; train it with JDiffusion's dreambooth train.py into that folder, fix producer.lora_dir "
            f"in {config.source or 'the config'}, or set producer.missing_lora: warn to use the base model")
