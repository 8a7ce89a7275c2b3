"""Regenerate tests/golden/lora.npz with diffusers + peft (reference venv): .venv-ref/bin/python tests/golden/make_lora.py

A DreamBooth LoRA made as JDiffusion's train.py makes it (peft LoraConfig r=4 on to_q/to_k/to_v/to_out.0 of
the tiny UNet, saved with convert_state_dict_to_diffusers + save_lora_weights(safe_serialization=False)),
plus a text-encoder LoRA on q/k/v/out_proj; LoRA values are tiny_param(diffusers key, seed LORA_SEED), up
not zero. Stored: the .bin bytes as written, the tiny UNet / text encoder outputs without LoRA, with it
loaded by load_lora_into_unet / load_lora_into_text_encoder at scale 1 and 0.5, and the bytes of a
torch.save of odd tensors (transposed, sliced, fp16, bf16, scalar, int64) for the weight-reader tests.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.devkit.tiny_weights import LORA_RANK, TEXT_ENCODER, UNET, tiny_param  # noqa: E402

LORA_SEED = 77
torch.manual_seed(0)


def fill(module, seed=None):
    state = {k: torch.from_numpy(tiny_param(k, v.shape) if seed is None else tiny_param(k, v.shape, seed))
             for k, v in module.state_dict().items()}
    module.load_state_dict(state)


def base_unet():
    unet = UNet2DConditionModel(**{k: v for k, v in UNET.items() if not k.startswith("_")}).eval()
    fill(unet)
    return unet


def base_text_encoder():
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k != "architectures"})).eval()
    te.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) if v.is_floating_point() else v
                        for k, v in te.state_dict().items()})
    return te


def lora_layers(model, targets, prefix):
    """Attach peft LoRA as JDiffusion does, fill it from tiny_param under the saved (diffusers) key names."""
    model.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                 target_modules=targets))
    peft_state = get_peft_model_state_dict(model)
    names = dict(zip(peft_state, convert_state_dict_to_diffusers(peft_state)))
    values = {k: torch.from_numpy(tiny_param(f"{prefix}.{names[k]}", v.shape, LORA_SEED)) for k, v in peft_state.items()}
    own = model.state_dict()
    model.load_state_dict({**own, **{k.replace(".weight", ".default.weight"): v for k, v in values.items()}})
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def odd_tensors_bin(tmp):
    grid = torch.arange(12.0).reshape(3, 4)
    torch.save({"transposed": grid.t(), "slice": grid[1:, 1:], "half": torch.tensor([1.0, 2.0]).half(),
                "bfloat16": torch.tensor([1.5, -2.25]).bfloat16(), "scalar": torch.tensor(3.0),
                "long": torch.tensor([5, 6])}, tmp / "odd.bin")
    return np.frombuffer((tmp / "odd.bin").read_bytes(), np.uint8)


@torch.no_grad()
def main():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 4, 16, 24)).astype(np.float32)
    cond = rng.standard_normal((1, 77, 32)).astype(np.float32)
    ids = np.array([[49406, 320, 2368, 530, 1844, 318, 271, 271, 49407] + [0] * 68], np.int32)
    out = {"x": x, "cond": cond, "t": np.array(961), "ids": ids}

    unet_layers = lora_layers(base_unet(), ["to_k", "to_q", "to_v", "to_out.0"], "unet")
    te_layers = lora_layers(base_text_encoder(), ["q_proj", "k_proj", "v_proj", "out_proj"], "text_encoder")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                                  safe_serialization=False)
        raw = (tmp / "pytorch_lora_weights.bin").read_bytes()
        out["lora_bin"] = np.frombuffer(raw, np.uint8)
        out["torch_odd_bin"] = odd_tensors_bin(tmp)
        state = torch.load(tmp / "pytorch_lora_weights.bin")
    assert all(k.startswith("unet.") and ".lora." in k or k.startswith("text_encoder.") for k in state), list(state)[:4]
    out["lora_keys"] = np.array(sorted(state))

    unet, te = base_unet(), base_text_encoder()
    run_unet = lambda scale: unet(torch.from_numpy(x), 961, torch.from_numpy(cond),
                                  cross_attention_kwargs={"scale": scale}).sample.numpy()
    run_te = lambda: te(torch.from_numpy(ids).long())[0].numpy()
    out["unet_base"], out["te_base"] = run_unet(1.0), run_te()
    unet_state = {k: v for k, v in state.items() if k.startswith("unet.")}
    te_state = {k: v for k, v in state.items() if k.startswith("text_encoder.")}
    StableDiffusionPipeline.load_lora_into_unet(unet_state, None, unet)
    out["unet_lora"], out["unet_lora_half"] = run_unet(1.0), run_unet(0.5)
    StableDiffusionPipeline.load_lora_into_text_encoder(te_state, None, te, lora_scale=1.0)
    out["te_lora"] = run_te()
    for k in ("unet", "te"):
        change = np.abs(out[f"{k}_lora"] - out[f"{k}_base"]).max() / np.abs(out[f"{k}_base"]).max()
        assert change > 1e-3, f"{k} LoRA changes the output by only {change}"
    np.savez_compressed(Path(__file__).with_name("lora.npz"), **out)
    print(f"wrote {len(out)} arrays; {len(state)} LoRA tensors")


if __name__ == "__main__":
    main()
