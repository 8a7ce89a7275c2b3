"""The tiny model folder of `common.devkit.tiny_model`, written without Jittor, for tests of the launch checks.

The devkit writes the tiny model over the shapes of our Jittor modules; here the shapes come from the
declarations those modules are built from (`common.sd.architecture`; tests/test_model_check.py shows them
equal), so the files are the same and a test of the launcher's checks needs no Jittor import.
"""
from pathlib import Path

from safetensors.numpy import save_file

from common.devkit import tiny_model, tiny_weights
from common.sd.architecture import declared_shapes, text_encoder, unet, vae


def shapes(family: str = "sd21") -> dict:
    configs = tiny_model.FAMILIES[family]
    return {"unet": declared_shapes(unet(configs["unet"])), "vae": declared_shapes(vae(tiny_weights.VAE)),
            "text_encoder": declared_shapes(text_encoder(configs["text_encoder"]))}


def write_model(folder: Path, lora_styles=(), family: str = "sd21") -> Path:
    """The tiny model at `folder`, with a diffusers-format LoRA per style in `folder/loras/style_NN/`."""
    folder = Path(folder)
    found = shapes(family)
    tiny_model._write_base(folder, found, family)
    for style in lora_styles:
        target = folder / "loras" / f"style_{style}"
        target.mkdir(parents=True, exist_ok=True)
        save_file(tiny_model.lora_state(found["unet"], style), str(target / "pytorch_lora_weights.safetensors"))
    return folder
