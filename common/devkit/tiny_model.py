"""Write a tiny random model with SD 2.1's structure, in the diffusers folder layout, plus tiny style LoRAs.

    python -m common.devkit.tiny_model OUT_DIR [--lora-styles 00,01] [--lora-format safetensors|bin] [--family sd1]

`--family sd1` writes the SD 1.x-shaped twin instead (1x1-conv projections, quick_gelu text encoder,
epsilon PNDM scheduler config, tokenizer padding with <|endoftext|>; see `common.devkit.tiny_weights`).

Tests, the demo and benchmarks run the whole engine on it without real weights. Weights come from
`common.devkit.tiny_weights.tiny_param` over the names and shapes of our Jittor modules' `state_dict()` (equal to
diffusers'/transformers', which the parity tests check), so the output is deterministic and a reference
library filled by the same rule holds the same numbers. Like a Maildir delivery, everything is written
into a temporary folder beside the target and renamed into place: a crash leaves nothing half-written.
"""
import argparse
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

from common.devkit.assets.clip_bpe import write_tokenizer_folder
from common.devkit.tiny_weights import (LORA_RANK, SCHEDULER, SCHEDULER_SD1, SEED, TEXT_ENCODER, TEXT_ENCODER_SD1,
                                        UNET, UNET_SD1, VAE, tiny_param)

DIFFUSERS_VERSION = "0.27.2"
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
FILES = ("model_index.json", "scheduler/scheduler_config.json",
         "text_encoder/config.json", "text_encoder/model.safetensors",
         "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
         "tokenizer/special_tokens_map.json",
         "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
         "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
# What differs between the model families we write; "sd21" is the default and the demo's.
FAMILIES = {
    "sd21": {"unet": UNET, "text_encoder": TEXT_ENCODER, "scheduler": SCHEDULER, "pad_token": "!"},
    "sd1": {"unet": UNET_SD1, "text_encoder": TEXT_ENCODER_SD1, "scheduler": SCHEDULER_SD1,
            "pad_token": "<|endoftext|>"},
}
LORA_FILE = {"safetensors": "pytorch_lora_weights.safetensors", "bin": "pytorch_lora_weights.bin"}
# The UNet attention projections JDiffusion's DreamBooth LoRA adapts (docs/engine.md §12).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _family(name: str) -> dict:
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def module_shapes(family: str = "sd21") -> dict:
    """{component: {key: shape}} of our Jittor modules built from the tiny configs of `family`."""
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    configs = _family(family)
    built = {"text_encoder": CLIPTextModel(configs["text_encoder"]), "unet": UNet2DConditionModel(configs["unet"]),
             "vae": AutoencoderKL(VAE)}
    return {name: {k: tuple(v.shape) for k, v in model.state_dict().items()} for name, model in built.items()}


def lora_state(unet_shapes: dict, style: str) -> dict:
    """diffusers-format LoRA keys for every transformer block's attn1/attn2 projection; up is non-zero."""
    seed = (SEED ^ zlib.crc32(f"style_{style}".encode())) & 0xFFFFFFFF
    state = {}
    for key, shape in sorted(unet_shapes.items()):
        module = key[:-len(".weight")]
        if not key.endswith(".weight") or not module.endswith(tuple(f".attn{i}.{t}" for i in (1, 2) for t in LORA_TARGETS)):
            continue
        out_features, in_features = shape
        for half, half_shape in (("down", (LORA_RANK, in_features)), ("up", (out_features, LORA_RANK))):
            name = f"unet.{module}.lora.{half}.weight"
            state[name] = tiny_param(name, half_shape, seed)
    return state


def _dump_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save(path: Path, state: dict) -> None:
    from safetensors.numpy import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def _write_base(folder: Path, shapes: dict, family: str) -> None:
    configs = _family(family)
    versioned = {"_diffusers_version": DIFFUSERS_VERSION}
    _dump_json(folder / "scheduler" / "scheduler_config.json", {**configs["scheduler"], **versioned})
    _dump_json(folder / "text_encoder" / "config.json", {**configs["text_encoder"], "transformers_version": "4.40.2"})
    _dump_json(folder / "unet" / "config.json", {**configs["unet"], **versioned})
    _dump_json(folder / "vae" / "config.json", {**VAE, **versioned})
    write_tokenizer_folder(folder / "tokenizer", pad_token=configs["pad_token"])
    files = {"text_encoder": "model.safetensors", "unet": "diffusion_pytorch_model.safetensors",
             "vae": "diffusion_pytorch_model.safetensors"}
    for name, filename in files.items():
        _save(folder / name / filename, {k: tiny_param(k, s) for k, s in shapes[name].items()})
    index = {**MODEL_INDEX, "scheduler": ["diffusers", configs["scheduler"]["_class_name"]]}
    _dump_json(folder / "model_index.json", index)  # last: its presence marks a finished folder


def _commit(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _style_id(style) -> str:
    style = str(style).strip()
    style = style[len("style_"):] if style.startswith("style_") else style
    if not style.isdigit():
        raise ValueError(f"LoRA style {style!r}: expected a number like 00 or style_00")
    return style.zfill(2)


def _written_family(out: Path):
    """The family whose UNet config `out` holds (None if none matches)."""
    try:
        unet = json.loads((out / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    unet.pop("_diffusers_version", None)
    return next((name for name, configs in FAMILIES.items() if configs["unet"] == unet), None)


def write_tiny_model(out_dir, lora_styles=(), lora_format: str = "safetensors", family: str = "sd21") -> Path:
    """Write (or complete) the tiny model of `family` ("sd21" or "sd1") at `out_dir`; existing complete parts
    are kept. Returns the path."""
    out = Path(out_dir)
    _family(family)
    if lora_format not in LORA_FILE:
        raise ValueError(f"lora_format {lora_format!r}: expected one of {', '.join(LORA_FILE)}")
    styles = [_style_id(s) for s in lora_styles]
    if out.exists() and not (out / "model_index.json").is_file():
        if any(out.iterdir()):
            raise FileExistsError(f"{out}: exists but is not a finished tiny model; delete it or pick another folder")
        out.rmdir()
    shapes = None
    complete = all((out / f).is_file() for f in FILES)
    if complete and _written_family(out) != family:
        raise FileExistsError(f"{out}: holds a tiny model of another family than {family!r}; "
                              "delete it or pick another folder")
    if not complete:
        shapes = module_shapes(family)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _write_base(tmp, shapes, family)
        _commit(tmp, out)
    for style in styles:
        target = out / "loras" / f"style_{style}"
        if (target / LORA_FILE[lora_format]).is_file():
            continue
        shapes = shapes or module_shapes(family)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = lora_state(shapes["unet"], style)
        if lora_format == "bin":
            from common.sd.weights import save_torch_zip
            save_torch_zip(state, tmp / LORA_FILE["bin"])
        else:
            _save(tmp / LORA_FILE["safetensors"], state)
        if target.exists():  # the folder holds the other format: add ours beside it
            os.replace(tmp / LORA_FILE[lora_format], target / LORA_FILE[lora_format])
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _commit(tmp, target)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.devkit.tiny_model", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="folder to write (a diffusers StableDiffusionPipeline layout)")
    parser.add_argument("--lora-styles", default="", help="comma-separated style numbers, e.g. 00,01")
    parser.add_argument("--lora-format", choices=sorted(LORA_FILE), default="safetensors",
                        help="LoRA file kind: diffusers' .safetensors or JDiffusion's torch-zip .bin")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd21",
                        help="model family: SD 2.1 (default) or SD 1.x")
    args = parser.parse_args(argv)
    styles = [s for s in args.lora_styles.split(",") if s.strip()]
    try:
        path = write_tiny_model(args.out_dir, styles, args.lora_format, args.family)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
