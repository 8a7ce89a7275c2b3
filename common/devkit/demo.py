"""The CPU demo: a tiny random checkpoint, two drawn styles, a config, and contact sheets of the results.

`launch.py --demo` calls `prepare_demo(workdir)`, runs the whole pipeline on the result, then calls
`make_contact_sheets(config)`. Every file is written idempotently (kept when present, written atomically
when not), so an interrupted demo resumes. The model is random, so pictures are noise-like; the demo
proves the plumbing (planning, queue, every stage, resume, the score), not image quality; the score's
networks are random too, so its numbers mean nothing.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import List

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

from common.atomic import png_is_complete, write_bytes, write_png
from common.config import RunConfig
from common.naming import prompt_names

SIZE = 128  # the tiny model's 16x16 latents
PROMPTS = {
    "00": ["Dolphin", "Lighthouse", "Mountain"],
    "01": ["Cat", "Bicycle", "Tree"],
}
IMAGES_PER_STYLE = 2
TRAIN_STEPS = 20  # per style's LoRA: enough to show a loss curve, seconds on the tiny model


def stripes(seed: int, size: int = SIZE) -> np.ndarray:
    """Style 00: diagonal stripes of saturated colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    band = ((xx + yy * rng.uniform(0.5, 1.5)) // rng.integers(8, 16)).astype(int)
    palette = rng.integers(0, 256, (16, 3))
    palette[:, rng.integers(0, 3)] = 255  # one channel high: vivid colours
    return palette[band % len(palette)].astype(np.uint8)


def dots(seed: int, size: int = SIZE) -> np.ndarray:
    """Style 01: dark dots on a soft pastel gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    a, b = rng.uniform(150, 255, 3), rng.uniform(150, 255, 3)
    image = (a * (1 - xx[..., None]) + b * xx[..., None]) * (0.8 + 0.2 * yy[..., None])
    step = int(rng.integers(10, 16))
    radius = step * 0.3
    cy = (yy * (size - 1)) % step - step / 2
    cx = (xx * (size - 1)) % step - step / 2
    inside = cx ** 2 + cy ** 2 < radius ** 2
    image[inside] = rng.uniform(0, 90, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


DRAW = {"00": stripes, "01": dots}


def _write_dataset(data: Path):
    for style, prompts in PROMPTS.items():
        folder = data / style
        for i in range(IMAGES_PER_STYLE):
            path = folder / "images" / f"{i:02d}.png"
            if not png_is_complete(path):
                write_png(path, DRAW[style](seed=int(style) * 100 + i), fsync=True)
        prompt_json = folder / "prompt.json"
        if not prompt_json.is_file():
            text = json.dumps({str(k): p for k, p in enumerate(prompts)}, indent=1)
            write_bytes(prompt_json, text.encode(), fsync=True)


# the demo's own word list for CLIP-R: its prompts among other words (the checker's list is not ours to ship)
DEMO_WORDS = ("Dolphin", "Lighthouse", "Mountain", "Cat", "Bicycle", "Tree", "Apple", "House", "River", "Car",
              "Bird", "Flower")


def write_score_files(folder: Path) -> dict:
    """Random-weight networks in the checker's file formats (small where the architecture allows) and a
    word list, in `folder`, written once (into a temporary folder renamed when whole); the eval: settings
    that point at them. Their scores mean nothing: they show the plumbing."""
    from common.devkit.score_weights_cnn import write_inception, write_lpips_linear, write_squeezenet
    from common.devkit.score_weights_iqa import write_clip_rn50, write_clip_tokenizer
    from common.devkit.score_weights_vit import write_clip, write_dino
    files = {"dino": "dino", "clip": "clip", "fid_inception": "inception.pth", "lpips_backbone": "squeezenet.pth",
             "lpips_linear": "squeeze.pth", "clip_iqa": "RN50.pt", "clip_iqa_tokenizer": "clip_tokenizer",
             "clip_r_prompts": "clip_r_prompts.txt"}
    if not folder.is_dir():  # a folder of its own per writer: two processes preparing at once both finish
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        write_dino(tmp / files["dino"])
        write_clip(tmp / files["clip"])
        write_inception(tmp / files["fid_inception"])
        write_squeezenet(tmp / files["lpips_backbone"])
        write_lpips_linear(tmp / files["lpips_linear"])
        write_clip_rn50(tmp / files["clip_iqa"])
        write_clip_tokenizer(tmp / files["clip_iqa_tokenizer"])
        (tmp / files["clip_r_prompts"]).write_text("\n".join(DEMO_WORDS))
        try:
            tmp.rename(folder)
        except OSError:  # another process placed its copy first: the same files
            shutil.rmtree(tmp, ignore_errors=True)
    return {"enabled": True, **{key: str(folder / name) for key, name in files.items()}}


def demo_settings(workdir: Path) -> dict:
    """The demo's config: tiny model, 128x128, few steps, float32; each style's LoRA trained first (a few
    steps), where JDiffusion's trainer would put it (style/style_NN/); paths inside `workdir`."""
    return {
        "dataset": str(workdir / "data"),
        "output": str(workdir / "output"),
        "queue_dir": str(workdir / "queue_dir"),
        "model": {"path": str(workdir / "model"), "dtype": "float32"},
        "lora": {"dir": str(workdir / "style"), "missing": "train"},
        "producer": {"size": SIZE, "steps": 10, "batch": 3},
        "consumer": {"steps": 10, "batch": 3},
        "train": {"steps": TRAIN_STEPS, "checkpoint_every": 10, "log_every": 10},
        "queue": {"fsync": "none"},
        "eval": write_score_files(workdir / "score"),
    }


def prepare_demo(workdir) -> Path:
    """Write (or keep) the demo's model, dataset and config under `workdir`; return the config path."""
    from common.devkit.tiny_model import write_tiny_model
    workdir = Path(workdir).resolve()
    write_tiny_model(workdir / "model")
    _write_dataset(workdir / "data")
    config = workdir / "demo.yaml"
    text = yaml.safe_dump(demo_settings(workdir), sort_keys=False)
    if not config.is_file() or config.read_text() != text:
        write_bytes(config, text.encode(), fsync=True)
    return config


def _tile(path: Path, size: int) -> Image.Image:
    """The image at `path` fitted to size x size, or a grey 'missing' tile."""
    if png_is_complete(path):
        with Image.open(path) as im:
            return im.convert("RGB").resize((size, size), Image.LANCZOS)
    tile = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(tile).text((4, size // 2 - 6), "missing", fill=(255, 255, 255))
    return tile


def contact_sheet(style_image: Path, rows: list, size: int) -> Image.Image:
    """The style image, then one column per prompt: its label, the content image, the stylized result."""
    font = ImageFont.load_default()
    label_h, pad = 14, 4
    width = pad + (len(rows) + 1) * (size + pad)
    sheet = Image.new("RGB", (width, pad + 2 * (label_h + size + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), "style", fill=(0, 0, 0), font=font)
    sheet.paste(_tile(style_image, size), (pad, pad + label_h))
    for i, (prompt, content, result) in enumerate(rows):
        x = pad + (i + 1) * (size + pad)
        text = prompt if draw.textlength(prompt, font=font) <= size else prompt[: max(size // 7, 1)] + "..."
        draw.text((x, pad), text, fill=(0, 0, 0), font=font)
        sheet.paste(_tile(content, size), (x, pad + label_h))
        draw.text((x, pad + label_h + size + pad), "stylized", fill=(0, 0, 0), font=font)
        sheet.paste(_tile(result, size), (x, pad + 2 * label_h + size + pad))
    return sheet


def _style_image(config: RunConfig, style_dir: Path) -> Path:
    """The image the consumer styles with (consumer.style_image, else the first); a missing one shows grey."""
    from common.style_files import style_image_path
    try:
        return style_image_path(style_dir, config.consumer.style_image)
    except FileNotFoundError:
        return style_dir / "images" / "missing.png"


def loss_curves(config: RunConfig) -> List[Path]:
    """The loss curves the trainer drew next to each style's LoRA."""
    return sorted(Path(config.lora.dir).glob("*/loss_curve.png"))


def make_contact_sheets(config: RunConfig) -> List[Path]:
    """Write OUTPUT/STYLE/contact_sheet.png for every style of the dataset; return their paths."""
    dataset, output = Path(config.dataset), Path(config.output)
    size = min(config.producer.size, 256)
    written = []
    for style_dir in sorted(p for p in dataset.iterdir() if (p / "prompt.json").is_file()):
        source = style_dir / "prompt.json"
        prompts = json.loads(source.read_text())
        names = prompt_names(prompts, str(source))
        out = output / style_dir.name
        rows = [(prompts[k], out / "content" / f"{names[k]}.png", out / f"{names[k]}.png") for k in prompts]
        sheet = contact_sheet(_style_image(config, style_dir), rows, size)
        written.append(write_png(out / "contact_sheet.png", sheet, fsync=config.queue.fsync,
                                 replace=True))  # drawn from the outputs: a rerun redraws it
    return written
