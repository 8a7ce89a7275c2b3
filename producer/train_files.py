"""The files a training job writes: the LoRA, its loss curve, checkpoints and progress.json.

Jittor-free (NumPy, Pillow, safetensors), so reference scripts can write LoRA files exactly as the
trainer does. Every write is atomic (common.atomic): a reader sees the old file or the whole new one.
"""
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from common.atomic import write_bytes, write_png
from common.provenance import KEYWORD, place_lora
from common.sd.weights import save_torch_zip

LORA_BIN = "pytorch_lora_weights.bin"
LORA_SAFETENSORS = "pytorch_lora_weights.safetensors"
LOSS_CURVE = "loss_curve.png"
CHECKPOINT = "checkpoint.npz"
PROGRESS = "progress.json"


def lora_bytes(state: dict) -> bytes:
    """{diffusers key: float32 array} as a torch zip `.bin`, what diffusers' save_lora_weights writes."""
    with tempfile.TemporaryDirectory(prefix="jstyleid-lora-") as tmp:
        path = Path(tmp) / LORA_BIN  # the zip's root folder is named after the file, as torch.save does
        save_torch_zip({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, path)
        return path.read_bytes()


def write_lora(state: dict, path, *, fsync: bool, safetensors: bool = False, made_by: bytes = None,
               old: bytes = None) -> Path:
    """Write the LoRA to `path` (…/pytorch_lora_weights.bin); with `safetensors` also the .safetensors
    beside it, first, so the .bin (what the producer and `skip if done` look for) lands last. `made_by`:
    the record it carries (provenance.json, and the .safetensors' metadata), `old` the one it replaces
    (that LoRA is kept beside it; common/provenance.py)."""
    path = Path(path)
    if safetensors:
        from safetensors.numpy import save
        metadata = {"format": "pt", **({KEYWORD: made_by.decode("ascii")} if made_by else {})}
        data = save({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, metadata=metadata)
        write_bytes(path.with_name(LORA_SAFETENSORS), data, fsync=fsync)
    if made_by is None:
        return write_bytes(path, lora_bytes(state), fsync=fsync)
    return place_lora(path, lora_bytes(state), made_by, old, fsync=fsync)


def write_loss_curve(losses, path, *, fsync: bool, title: str = "") -> Path:
    """A small PNG of the loss per step (raw, light) and its running mean (dark), drawn with Pillow."""
    from PIL import Image, ImageDraw
    width, height, pad = 480, 240, 28
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    losses = np.asarray(losses, dtype=np.float64)
    finite = losses[np.isfinite(losses)]
    draw.rectangle((pad, pad, width - pad, height - pad), outline=(160, 160, 160))
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        hi = hi if hi > lo else lo + 1.0
        span = max(len(losses) - 1, 1)

        def point(i, y):
            return (pad + (width - 2 * pad) * i / span, height - pad - (height - 2 * pad) * (y - lo) / (hi - lo))

        window = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        for series, colour, offset in ((losses, (170, 190, 230), 0), (smooth, (20, 60, 160), window - 1)):
            points = [point(i + offset, y) for i, y in enumerate(series) if np.isfinite(y)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=1 if series is losses else 2)
        draw.text((pad, 4), f"{title}  loss {lo:.4g} .. {hi:.4g}", fill="black")
        draw.text((pad, height - pad + 6), f"step 1 .. {len(losses)}", fill="black")
    return write_png(path, image, fsync=fsync, replace=True)  # a retrained LoRA gets its own curve


def write_progress(folder, step: int, steps: int, loss: float) -> Path:
    """progress.json {"step", "steps", "loss"} for the launcher's steps bar (advisory: never fsynced)."""
    data = json.dumps({"step": step, "steps": steps, "loss": loss if np.isfinite(loss) else None})
    return write_bytes(Path(folder) / PROGRESS, data.encode(), fsync=False)


def save_checkpoint(folder, trainer_state: dict, meta: dict, *, fsync: bool) -> Path:
    """One .npz holding the LoRA, both Adam moments and `meta` (step, RNG state, losses, fingerprint)."""
    arrays = {f"{part}/{key}": value for part in ("lora", "m", "v") for key, value in trainer_state[part].items()}
    arrays["meta"] = np.array(json.dumps({**meta, "step": trainer_state["step"]}))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(Path(folder) / CHECKPOINT, buffer.getvalue(), fsync=fsync)


def load_checkpoint(folder):
    """(trainer_state, meta) of the folder's checkpoint, or None when there is none or it is unreadable."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            state = {"lora": {}, "m": {}, "v": {}, "step": int(meta["step"])}
            for name in data.files:
                part, _, key = name.partition("/")
                if part in ("lora", "m", "v"):
                    state[part][key] = data[name]
    except Exception:  # a foreign or damaged file: start over rather than crash
        return None
    return state, meta
