"""Regenerate tests/golden/single_file.npz (reference venv): .venv-ref/bin/python tests/golden/make_single_file.py

The tiny SD 2.1 and SD 1.x folders (`python -m common.devkit.tiny_model`, run in the Jittor venv) are
written as single files by common/devkit/single_file.py (.safetensors and Lightning .ckpt, with and without
a model_ema.* copy) and loaded by diffusers 0.27.2's `StableDiffusionPipeline.from_single_file`, offline:
the original LDM config is a local YAML file (`original_config_file`), and the text encoder config and
tokenizer it fetches by repo id (`stabilityai/stable-diffusion-2`, `openai/clip-vit-large-patch14`) are
the tiny folder's, placed in a private Hugging Face cache (HF_HUB_OFFLINE=1). Every tensor diffusers
builds must equal the folder's (the UNet's the EMA values with extract_ema=True: 0.27.2's
`from_single_file` ignores that argument, so its converter `convert_ldm_unet_checkpoint` is called). The
original LDM code fixes GroupNorm at 32 groups, so `from_single_file` builds the UNet and VAE with 32; the
tiny models use 8, which an LDM YAML cannot say, so the UNet and VAE are rebuilt from the folder's
config.json and the file is loaded into them by diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`), as model.config does for us. The golden holds the
UNet, VAE decoder and text encoder outputs of the SD 2.x safetensors file (EMA and not) and the SD 1.x
one. torch 2.6+ loads `.ckpt` with weights_only, which refuses Lightning's classes: the .ckpt files are
loaded as diffusers 0.27.2 was written for (weights_only=False), with a stand-in `pytorch_lightning` module.
"""
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CACHE = tempfile.mkdtemp(prefix="hf-cache-")
os.environ.update(HF_HUB_CACHE=CACHE, HF_HUB_OFFLINE="1", HF_HOME=CACHE)

import torch  # noqa: E402
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, load_single_file_model_checkpoint)

from common.devkit.single_file import EMA_SEED, write_single_file  # noqa: E402
from common.devkit.tiny_weights import tiny_param  # noqa: E402

_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})
for module in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
    sys.modules[module] = types.ModuleType(module)
sys.modules[module].ModelCheckpoint = type("ModelCheckpoint", (), {"__setstate__": lambda self, state: None})

LDM_CONFIG = {  # the tiny models as SD's original v2-inference-v.yaml / v1-inference.yaml describe them
    "sd21": {"parameterization": "v", "text": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
             "heads": {"num_head_channels": 16, "use_linear_in_transformer": True}},
    "sd1": {"parameterization": None, "text": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
            "heads": {"num_heads": 4}},
}
TEXT_REPO = {"sd21": ("stabilityai/stable-diffusion-2", "text_encoder", "tokenizer"),
             "sd1": ("openai/clip-vit-large-patch14", "", "")}


def original_config(family: str) -> dict:
    spec = LDM_CONFIG[family]
    params = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
              "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                  "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                  "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 1, 2, 2],
                  "transformer_depth": 1, "context_dim": 32, **spec["heads"]}},
              "first_stage_config": {"params": {"ddconfig": {
                  "ch": 32, "ch_mult": [1, 1, 2, 2], "z_channels": 4, "in_channels": 3, "out_ch": 3,
                  "num_res_blocks": 2, "resolution": 256}}},
              "cond_stage_config": {"target": spec["text"]}}
    if spec["parameterization"]:
        params["parameterization"] = spec["parameterization"]
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def cache_text_files(folder: Path, family: str) -> None:
    """The tiny text encoder config and tokenizer where from_single_file looks them up by repo id."""
    repo, text_sub, tok_sub = TEXT_REPO[family]
    snapshot = Path(CACHE) / ("models--" + repo.replace("/", "--")) / "snapshots" / ("0" * 40)
    (snapshot.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for sub, source in ((text_sub, folder / "text_encoder"), (tok_sub, folder / "tokenizer")):
        target = snapshot / sub
        target.mkdir(parents=True, exist_ok=True)
        for f in source.glob("*.json"):
            (target / f.name).write_bytes(f.read_bytes())
        for f in source.glob("*.txt"):
            (target / f.name).write_bytes(f.read_bytes())


def check_modules(pipe, ema: bool) -> None:
    for name in ("unet", "vae", "text_encoder"):
        for key, value in getattr(pipe, name).state_dict().items():
            if key.endswith("position_ids"):
                continue
            seed = EMA_SEED if ema and name == "unet" else None
            expected = tiny_param(key, value.shape, *([seed] if seed else []))
            assert np.array_equal(value.numpy(), expected), f"{name}.{key}"


def outputs(pipe, prefix: str, rng, folder: Path) -> dict:
    """LDM's YAML cannot say the tiny models' 8 norm groups (LDM hard-codes 32): the converted tensors run in
    modules built from the folder's configs, as model.config makes ours."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        module = cls.from_config(json.loads((folder / name / "config.json").read_text())).eval()
        module.load_state_dict(getattr(pipe, name).state_dict())
        setattr(pipe, name, module)
    sample = rng.standard_normal((2, 4, 16, 24)).astype(np.float32)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    latents = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    ids = pipe.tokenizer(["a cat", "a painting of a dog, in style_07"], padding="max_length", max_length=77,
                         truncation=True, return_tensors="np").input_ids.astype(np.int64)
    with torch.no_grad():
        unet = pipe.unet(torch.from_numpy(sample), torch.tensor([961, 1]), torch.from_numpy(context)).sample
        decoded = pipe.vae.decode(torch.from_numpy(latents)).sample
        hidden = pipe.text_encoder(input_ids=torch.from_numpy(ids)).last_hidden_state
    return {f"{prefix}/unet_sample": sample, f"{prefix}/unet_context": context, f"{prefix}/unet_output": unet.numpy(),
            f"{prefix}/vae_latents": latents, f"{prefix}/vae_decoded": decoded.numpy(),
            f"{prefix}/text_ids": ids.astype(np.int32), f"{prefix}/text_hidden": hidden.numpy(),
            f"{prefix}/prediction": np.array(pipe.scheduler.config.prediction_type)}


def main():
    python = (ROOT / ".venv").resolve() / "bin" / "python"
    out, rng = {}, np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("sd21", "sd1"):
            folder = Path(tmp) / f"tiny-{family}"
            subprocess.run([str(python), "-m", "common.devkit.tiny_model", str(folder), "--family", family],
                           cwd=ROOT, check=True)
            cache_text_files(folder, family)
            config = Path(tmp) / f"{family}.yaml"
            config.write_text(json.dumps(original_config(family)))  # JSON is YAML
            for suffix in ("safetensors", "ckpt"):
                for ema in (False, True):
                    path = write_single_file(folder, Path(tmp) / f"{family}{'-ema' if ema else ''}.{suffix}", ema=ema)
                    pipe = StableDiffusionPipeline.from_single_file(
                        str(path), original_config_file=str(config), local_files_only=True, load_safety_checker=False)
                    assert pipe.unet.config.norm_num_groups == 32  # LDM's fixed GroupNorm: see the docstring
                    checkpoint = load_single_file_model_checkpoint(str(path))
                    pipe.unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
                    pipe.unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, pipe.unet.config, extract_ema=ema))
                    pipe.vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
                    pipe.vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, pipe.vae.config))
                    check_modules(pipe, ema)
                    expected = "v_prediction" if family == "sd21" else "epsilon"
                    assert pipe.scheduler.config.prediction_type == expected
                    assert pipe.tokenizer.pad_token == ("!" if family == "sd21" else "<|endoftext|>")
                    print(family, path.name, "loads in diffusers to the folder's modules")
                    if suffix == "safetensors" and (family == "sd21" or not ema):
                        out.update(outputs(pipe, f"{family}{'-ema' if ema else ''}", rng, folder))
    path = ROOT / "tests" / "golden" / "single_file.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes):", {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
