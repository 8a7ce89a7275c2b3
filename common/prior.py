"""Prior preservation's class images (docs/training.md): a style's class prompt, the set of class images
it names, and where that set lies.

With `train.prior` set, a style trains beside `train.prior.images` class images that the base model (no
LoRA) makes from its class prompt (`train.prior.prompt`, with `{style}` filled in if it has one). Styles
with the same class prompt share one set: the `prior` stage makes it once, one job per image (spread over
the workers, each image an output of its own, so a rerun makes only the missing ones), in
LORA_DIR/prior/GROUP/NNNN.png, and each of those styles' training waits for the whole set. Jittor-free:
the stage graph declares the stage from these.
"""
import hashlib
from pathlib import Path
from typing import List, Tuple

from common.naming import safe_name
from common.style_files import IMAGE_SUFFIXES

PRIOR_DIR = "prior"  # inside lora.dir


def class_prompt(config, style: str) -> str:
    return config.train.prior.prompt.format(style=style)


def class_group(prompt: str) -> str:
    """The name a class prompt's set is filed under (queue group and folder): readable, one per prompt."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{safe_name(prompt)[:64] or 'class'}~{digest}"


def class_folder(config, group: str) -> Path:
    return Path(config.lora.dir) / PRIOR_DIR / group


def class_jobs(config, style) -> Tuple[str, List[dict]]:
    """(group, one payload per class image) of a style's class set: image i has seed i, file NNNN.png."""
    prompt = class_prompt(config, style.name)
    return class_group(prompt), [{"prompt": prompt, "name": f"{i:04d}", "seed": i}
                                 for i in range(config.train.prior.images)]


def class_images(folder, n: int) -> List[Path]:
    """The first `n` images of a class folder in sorted order; a one-line error when it holds fewer."""
    folder = Path(folder)
    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if len(found) < n:
        raise FileNotFoundError(f"{folder}: {len(found)} class images, train.prior.images asks for {n}; "
                                "let the launcher's prior stage make them, or add images")
    return found[:n]
