"""Regenerate tests/golden/train_prior.npz with diffusers + peft (reference venv):
/work/venv-ref/bin/python tests/golden/make_train_prior.py

Prior preservation (`train.prior`, docs/training.md) as diffusers' train_dreambooth_lora.py computes it
with --with_prior_preservation, on the tiny model: each batch is the instance examples followed by as many
class examples (images and prompts concatenated, as its collate_fn does), one UNet call on both, the
prediction and target chunked in two, loss = mse(instance half) + prior_loss_weight x mse(class half).
Here: batch 1 x gradient accumulation 2, prior weight 0.5, the default LoRA (rank 4 on the attention
projections), 3 optimiser steps, v-prediction. Every random input is drawn here in NumPy and stored: per
step and sample the instance image index, the class image index, and for each half the VAE posterior
noise, the diffusion noise and the timestep. Stored: the loss of each step (the mean of its micro-batches),
every LoRA gradient of each step and the LoRA after the 3 updates, flattened in sorted diffusers-key
order. The A init is not stored: it is a Generator seeded INIT_SEED drawing N(0, (1/r)^2) in sorted key
order (make_train_recipes.py's rule, our trainer's).
"""
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler

from make_train_recipes import HP, INIT_SEED, ROOT, SIZE, STEPS, config, filled, flat, models, tokenize
from common.devkit.tiny_weights import SCHEDULER, VAE  # noqa: E402 (make_train_recipes puts the repo on the path)

INSTANCE_PROMPT, CLASS_PROMPT = "style_00", "a painting"
SETTINGS = dict(lr=1e-4, gradient_accumulation=2, prior_weight=0.5)
PREDICTION_TYPE = "v_prediction"


def half(rng, n_images):
    """One half's draw of one sample: (image index, posterior noise, diffusion noise, timestep)."""
    return (int(rng.integers(0, n_images)), rng.standard_normal((4, 8, 8)).astype(np.float32),
            rng.standard_normal((4, 8, 8)).astype(np.float32), int(rng.integers(0, 1000)))


def train(init, images, class_images, draws, vae):
    unet, text, lora = models({})
    with torch.no_grad():
        for key, param in lora.items():
            param.copy_(torch.from_numpy(init[key]))
    optimizer = torch.optim.AdamW([{"params": [p], "lr": SETTINGS["lr"]} for p in lora.values()], **HP)
    scheduler = DDPMScheduler.from_config({**config(SCHEDULER), "prediction_type": PREDICTION_TYPE})
    ids = tokenize([INSTANCE_PROMPT, CLASS_PROMPT])
    accumulation, weight = SETTINGS["gradient_accumulation"], SETTINGS["prior_weight"]
    losses, grads = [], []
    for step in draws:
        micro = []
        for instance, prior in step:  # batch 1: one instance example, then one class example
            pixels = torch.from_numpy(np.stack([images[instance[0]], class_images[prior[0]]]))
            with torch.no_grad():
                dist = vae.encode(pixels).latent_dist
                posterior = torch.from_numpy(np.stack([instance[1], prior[1]]))
                z0 = (dist.mean + dist.std * posterior) * vae.config.scaling_factor
            noise = torch.from_numpy(np.stack([instance[2], prior[2]]))
            timesteps = torch.tensor([instance[3], prior[3]], dtype=torch.long)
            noisy = scheduler.add_noise(z0, noise, timesteps)
            target = scheduler.get_velocity(z0, noise, timesteps)
            pred = unet(noisy, timesteps, text(ids)[0]).sample
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            loss = loss + weight * F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            (loss / accumulation).backward()
            micro.append(loss.item())
        losses.append(np.mean(micro))
        grads.append(flat(p.grad for p in lora.values()))
        optimizer.step()
        optimizer.zero_grad()
    return {"loss": np.array(losses, np.float32), "grads": np.stack(grads), "weights": flat(lora.values())}


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(2026)
    pixels = rng.integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.float32)
    all_images = ((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
    images, class_images = all_images[:2], all_images[2:]
    vae = filled(AutoencoderKL(**config(VAE)))
    _, _, lora = models({})
    init_rng = np.random.default_rng(INIT_SEED)
    init = {k: (init_rng.standard_normal(tuple(v.shape)) / v.shape[0]).astype(np.float32)
            if k.endswith(".down.weight") else np.zeros(tuple(v.shape), np.float32) for k, v in lora.items()}
    draws = [[(half(rng, len(images)), half(rng, len(class_images))) for _ in range(SETTINGS["gradient_accumulation"])]
             for _ in range(STEPS)]
    out = {"images": images, "class_images": class_images, "instance_prompt": np.array(INSTANCE_PROMPT),
           "class_prompt": np.array(CLASS_PROMPT), "keys": np.array(list(lora)),
           "init_seed": np.array(INIT_SEED), "prior_weight": np.array(SETTINGS["prior_weight"]),
           "gradient_accumulation": np.array(SETTINGS["gradient_accumulation"])}
    for h, name in enumerate(("instance", "prior")):
        for f, field in enumerate(("image", "posterior_noise", "noise", "timestep")):
            out[f"{name}/{field}"] = np.array([[sample[h][f] for sample in step] for step in draws])
    for key, value in train(init, images, class_images, draws, vae).items():
        out[f"{PREDICTION_TYPE}/{key}"] = value
    path = ROOT / "tests" / "golden" / "train_prior.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): loss {out[f'{PREDICTION_TYPE}/loss']}")


if __name__ == "__main__":
    main()
