"""Regenerate tests/golden/train.npz with diffusers + peft (reference venv): .venv-ref/bin/python tests/golden/make_train.py

DreamBooth-LoRA training steps as JDiffusion's examples/dreambooth/train.py (= diffusers'
train_dreambooth_lora.py without prior preservation) computes them, on the tiny model: peft
LoraConfig(r=4, alpha=4, init "gaussian") on every to_q/to_k/to_v/to_out.0, the UNet, VAE and text encoder
frozen, torch.optim.AdamW(lr 1e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8). Every random input is
drawn here in NumPy and stored, so the Jittor side feeds the same ones: the LoRA A init, two images, and per
step the image index, the VAE posterior noise, the diffusion noise and the timestep. Stored per prediction
type (v_prediction, epsilon): the loss of 3 steps, every LoRA gradient of each step and the LoRA after the
3 updates, flattened in sorted diffusers-key order; also the latents z0 of each step and the text context.

Second part: a LoRA with non-zero up weights (tiny_param, seed FILE_SEED) written by our own writer
(producer.train_files.write_lora, NumPy-only) is read back by diffusers' lora_state_dict +
load_lora_into_unet (what load_lora_weights does); the UNet output with it is stored.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from common.devkit.assets.clip_bpe import write_tokenizer_folder  # noqa: E402
from common.devkit.tiny_weights import LORA_RANK, SCHEDULER, TEXT_ENCODER, UNET, VAE, tiny_param  # noqa: E402
from producer.train_files import write_lora  # noqa: E402

SIZE = 64  # pixels; latents 8x8
STEPS = 3
TIMESTEPS = (981, 0, 417)
IMAGE_ORDER = (1, 0, 1)
PROMPT = "style_00"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
FILE_SEED = 91
HP = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


def filled(module):
    module.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) if v.is_floating_point() else v
                            for k, v in module.state_dict().items()})
    return module.eval().requires_grad_(False)


def config(d):
    return {k: v for k, v in d.items() if not k.startswith("_")}


def lora_unet():
    """The tiny UNet with peft LoRA as the trainer adds it; returns (unet, {diffusers key: peft param})."""
    unet = filled(UNet2DConditionModel(**config(UNET)))
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    peft_state = get_peft_model_state_dict(unet)
    names = dict(zip(peft_state, convert_state_dict_to_diffusers(peft_state)))
    params = dict(unet.named_parameters())
    by_key = {f"unet.{names[k]}": params[k.replace(".weight", ".default.weight")] for k in peft_state}
    return unet, dict(sorted(by_key.items()))


def flat(tensors) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for t in tensors]).astype(np.float32)


def context_of(prompt):
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_folder(Path(tmp), pad_token="!")
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    text = filled(CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k != "architectures"})))
    with torch.no_grad():
        return text(ids)[0]


def train(prediction_type, init, images, draws, context, vae):
    unet, lora = lora_unet()
    with torch.no_grad():
        for key, param in lora.items():
            param.copy_(torch.from_numpy(init[key]))
    optimizer = torch.optim.AdamW(list(lora.values()), **HP)
    scheduler = DDPMScheduler.from_config({**config(SCHEDULER), "prediction_type": prediction_type})
    losses, grads, latents = [], [], []
    for image, posterior_noise, noise, t in draws:
        with torch.no_grad():
            dist = vae.encode(torch.from_numpy(images[image][None])).latent_dist
            z0 = (dist.mean + dist.std * torch.from_numpy(posterior_noise[None])) * vae.config.scaling_factor
        noise = torch.from_numpy(noise[None])
        timesteps = torch.tensor([t], dtype=torch.long)
        noisy = scheduler.add_noise(z0, noise, timesteps)
        target = scheduler.get_velocity(z0, noise, timesteps) if prediction_type == "v_prediction" else noise
        pred = unet(noisy, timesteps, context).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
        losses.append(loss.item())
        grads.append(flat(p.grad for p in lora.values()))
        latents.append(z0[0].numpy())
        optimizer.step()
        optimizer.zero_grad()
    return {"loss": np.array(losses, np.float32), "grads": np.stack(grads), "weights": flat(lora.values()),
            "latents": np.stack(latents)}


def lora_file_check(out):
    """A LoRA written by our writer, read by diffusers: the UNet output with it."""
    _, lora = lora_unet()
    state = {k: tiny_param(k, tuple(v.shape), FILE_SEED) for k, v in lora.items()}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    cond = rng.standard_normal((1, 77, 32)).astype(np.float32)
    reference = filled(UNet2DConditionModel(**config(UNET)))
    with tempfile.TemporaryDirectory() as tmp:
        write_lora(state, Path(tmp) / "pytorch_lora_weights.bin", fsync=False)
        loaded, alphas = StableDiffusionPipeline.lora_state_dict(tmp)
        StableDiffusionPipeline.load_lora_into_unet(loaded, alphas, reference)
    assert sorted(loaded) == sorted(state), "diffusers read other keys than we wrote"
    with torch.no_grad():
        out["file_out"] = reference(torch.from_numpy(x), 500, torch.from_numpy(cond)).sample.numpy()
        out["file_base"] = filled(UNet2DConditionModel(**config(UNET)))(
            torch.from_numpy(x), 500, torch.from_numpy(cond)).sample.numpy()
    change = np.abs(out["file_out"] - out["file_base"]).max() / np.abs(out["file_base"]).max()
    assert change > 1e-3, f"the LoRA changes the output by only {change}"
    out.update(file_x=x, file_cond=cond, file_t=np.array(500), file_seed=np.array(FILE_SEED))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(2024)
    _, lora = lora_unet()
    keys = list(lora)
    init = {k: (rng.standard_normal(tuple(v.shape)) / LORA_RANK).astype(np.float32) if k.endswith(".down.weight")
            else np.zeros(tuple(v.shape), np.float32) for k, v in lora.items()}
    pixels = rng.integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    images = ((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
    posterior_noise = rng.standard_normal((STEPS, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((STEPS, 4, 8, 8)).astype(np.float32)
    draws = list(zip(IMAGE_ORDER, posterior_noise, noise, TIMESTEPS))
    vae = filled(AutoencoderKL(**config(VAE)))
    context = context_of(PROMPT)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(images)).latent_dist
    out = {"keys": np.array(keys), "shapes": np.array([",".join(map(str, lora[k].shape)) for k in keys]),
           "init": flat(torch.from_numpy(init[k]) for k in keys), "images": images,
           "image_order": np.array(IMAGE_ORDER), "timesteps": np.array(TIMESTEPS),
           "posterior_noise": posterior_noise, "noise": noise, "prompt": np.array(PROMPT),
           "context": context.numpy(), "posterior_mean": dist.mean.numpy(), "posterior_std": dist.std.numpy()}
    for prediction_type in ("v_prediction", "epsilon"):
        for name, value in train(prediction_type, init, images, draws, context, vae).items():
            out[f"{prediction_type}/{name}"] = value
    lora_file_check(out)
    path = ROOT / "tests" / "golden" / "train.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes); {len(keys)} LoRA tensors, "
          f"v loss {out['v_prediction/loss']}, eps loss {out['epsilon/loss']}")


if __name__ == "__main__":
    main()
