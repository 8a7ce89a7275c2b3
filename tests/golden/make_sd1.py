"""Regenerate tests/golden/sd1.npz (reference venv): .venv-ref/bin/python tests/golden/make_sd1.py

The tiny SD 1.x family (common.devkit.tiny_weights.*_SD1 filled by tiny_param): the UNet (1x1-conv
transformer projections, one head count for every level) on non-square latents with one timestep per
batch item, one Transformer2DModel recorded with its inputs; the quick_gelu text encoder; and the whole
model folder that `python -m common.devkit.tiny_model DIR --family sd1` writes (run in the Jittor venv,
another process), loaded by StableDiffusionPipeline.from_pretrained (every tensor equal to tiny_param, the
tokenizer padding with <|endoftext|>, an epsilon scheduler) and sampled with DDIM (pipeline_run.py).
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "golden"))
from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from common.devkit.tiny_weights import TEXT_ENCODER_SD1, UNET_SD1, tiny_param  # noqa: E402
from pipeline_run import reference_run  # noqa: E402

RECORDED = "up_blocks.2.attentions.1"  # a StyleID layer's Transformer2DModel: GN, 1x1 convs, block
ENCODE = ["a cat", "a painting of a dog, in style_07!"]


def fill(module):
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    module.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) for k, v in state.items()}, strict=False)
    return state


def unet_golden(rng) -> dict:
    unet = UNet2DConditionModel(**{k: v for k, v in UNET_SD1.items() if not k.startswith("_")}).eval()
    state = fill(unet)
    assert unet.down_blocks[0].attentions[0].proj_in.weight.ndim == 4, "SD 1.x projects with 1x1 convs"
    out = {"unet_keys": np.array(json.dumps({k: list(v.shape) for k, v in state.items()})),
           "unet_sample": rng.standard_normal((2, 4, 16, 24)).astype(np.float32),
           "unet_timesteps": np.array([961, 1], dtype=np.int64),
           "unet_context": rng.standard_normal((2, 77, 32)).astype(np.float32)}

    def hook(module, args, kwargs, output):
        out[f"{RECORDED}/in0"] = args[0].numpy()
        out[f"{RECORDED}/in1"] = kwargs["encoder_hidden_states"].numpy()
        out[f"{RECORDED}/out"] = output[0].numpy()

    handle = dict(unet.named_modules())[RECORDED].register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        out["unet_output"] = unet(torch.from_numpy(out["unet_sample"]), torch.from_numpy(out["unet_timesteps"]),
                                  torch.from_numpy(out["unet_context"])).sample.numpy()
    handle.remove()
    return out


def text_encoder_golden(tokenizer) -> dict:
    model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER_SD1.items() if k != "architectures"}))
    state = fill(model.eval())
    ids = tokenizer(ENCODE, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    assert ids[0, 3:].tolist() == [49407] * 74, "SD 1.x pads with <|endoftext|>"
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    return {"text_keys": np.array(json.dumps({k: list(v.shape) for k, v in state.items()})),
            "text_ids": ids.astype(np.int32), "text_hidden": hidden}


def written_folder_golden(folder: Path) -> tuple:
    """Load the Jittor-side writer's SD 1.x folder in diffusers and sample from it."""
    # The project venv by its real path (a symlinked .venv would make Jittor build a second compile cache).
    python = (ROOT / ".venv").resolve() / "bin" / "python"
    subprocess.run([str(python), "-m", "common.devkit.tiny_model", str(folder),
                    "--family", "sd1"], cwd=ROOT, check=True)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        for key, value in getattr(pipe, name).state_dict().items():
            if not key.endswith("position_ids"):
                assert np.array_equal(value.numpy(), tiny_param(key, value.shape)), f"{name}.{key}"
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.tokenizer.pad_token_id == 49407
    run = reference_run(pipe)
    assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.set_alpha_to_one
    return pipe.tokenizer, {f"pipe_{k}": v for k, v in run.items()}


def main():
    torch.manual_seed(0)
    out = unet_golden(np.random.default_rng(7))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, run = written_folder_golden(Path(tmp) / "tiny-sd1")
        out.update(run)
        out.update(text_encoder_golden(tokenizer))
    path = ROOT / "tests" / "golden" / "sd1.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes):", {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
