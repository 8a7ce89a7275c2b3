"""Regenerate tests/golden/tiny_model.npz (reference venv): .venv-ref/bin/python tests/golden/make_tiny_model.py

Stores the reference libraries' key/shape lists for the tiny configs (diffusers UNet2DConditionModel and
AutoencoderKL, transformers CLIPTextModel) and the diffusers-format LoRA keys that JDiffusion's peft setup
saves. It also proves the folder `python -m common.devkit.tiny_model` writes (run in the Jittor venv, another
process) is a real diffusers checkpoint: StableDiffusionPipeline.from_pretrained loads it with every tensor
equal to tiny_param, the tokenizer loads with pad "!", and load_lora_weights accepts its LoRA.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from common.devkit.tiny_weights import LORA_RANK, TEXT_ENCODER, UNET, VAE, tiny_param  # noqa: E402


def listing(prefix, state):
    return {f"{prefix}_keys": np.array(list(state)),
            f"{prefix}_shapes": np.array([",".join(map(str, v.shape)) for v in state.values()])}


def check_written_folder(folder: Path):
    """The Jittor-side writer's folder loads in diffusers with exactly the tiny_param weights."""
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "common.devkit.tiny_model", str(folder),
                    "--lora-styles", "00"], cwd=ROOT, check=True)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        for key, value in getattr(pipe, name).state_dict().items():
            if not key.endswith("position_ids"):
                assert np.array_equal(value.numpy(), tiny_param(key, value.shape)), f"{name}.{key}"
    assert pipe.tokenizer.pad_token_id == 0 and pipe.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    pipe.load_lora_weights(str(folder / "loras" / "style_00"))
    assert any("lora" in k for k in pipe.unet.state_dict()), "LoRA was not injected"


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{k: v for k, v in UNET.items() if not k.startswith("_")})
    vae = AutoencoderKL(**{k: v for k, v in VAE.items() if not k.startswith("_")})
    text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k != "architectures"}))
    out = {**listing("unet", unet.state_dict()), **listing("vae", vae.state_dict()),
           **listing("text_encoder", {k: v for k, v in text.state_dict().items() if not k.endswith("position_ids")})}
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]))
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out.update(listing("lora", {f"unet.{k}": v for k, v in lora.items()}))
    with tempfile.TemporaryDirectory() as tmp:
        check_written_folder(Path(tmp) / "tiny")
    path = ROOT / "tests" / "golden" / "tiny_model.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): unet {len(out['unet_keys'])}, vae {len(out['vae_keys'])}, "
          f"text_encoder {len(out['text_encoder_keys'])}, lora {len(out['lora_keys'])} keys; written folder loads in diffusers")


if __name__ == "__main__":
    main()
