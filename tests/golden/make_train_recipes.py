"""Regenerate tests/golden/train_recipes_*.npz with diffusers + peft (reference venv):
/work/venv-ref/bin/python tests/golden/make_train_recipes.py

The training recipes (docs/training.md) as diffusers' train_dreambooth_lora.py computes them with peft, on
the tiny model, 3 optimiser steps per scenario, every random input drawn here in NumPy and stored:
- `te`: a text-encoder LoRA (peft on q_proj/k_proj/v_proj/out_proj, rank 2, its own lr), per-image
  prompts (a caption for image 0, none for image 1), LoRA+ (B at 16x the lr).
- `targets`: LoRA on every UNet target we offer (attention, feed-forward, proj_in/proj_out, the ResNets'
  conv1/conv2/conv_shortcut as peft's Conv2d LoRA), alpha 4 at rank 2, lr constant_with_warmup (2 steps).
- `knobs/<prediction type>`: batch 2 x gradient accumulation 2, cosine lr with 1 warm-up step, min-SNR
  weighting (gamma 5, as diffusers' DreamBooth scripts weight it), noise offset 0.1.
peft 0.10 has no create_loraplus_optimizer: its documented grouping is built here (A at lr, B at
lr_ratio x lr, the same weight decay). The lr schedule is diffusers' get_scheduler, stepped once per
optimiser step; accumulation divides each micro-batch loss by the count, as accelerate does. One file per
scenario (train_recipes_NAME.npz): the loss of each step (the mean of its micro-batches), every LoRA
gradient of each step (steps 1 and 3 for `targets`, whose conv LoRAs are large) and the LoRA after the 3
updates, flattened in sorted diffusers-key order, plus the keys, shapes and the draws. The A init is not
stored: it is a Generator seeded INIT_SEED drawing N(0, (1/r)^2) in sorted key order, our trainer's rule.

Second part (`file/`): a LoRA with text-encoder and conv keys written by our own writer
(producer.train_files.write_lora) is read by diffusers (lora_state_dict, load_lora_into_unet,
load_lora_into_text_encoder: what load_lora_weights does); the text embeddings and UNet output are stored.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from common.devkit.assets.clip_bpe import write_tokenizer_folder  # noqa: E402
from common.devkit.tiny_weights import SCHEDULER, TEXT_ENCODER, UNET, VAE, tiny_param  # noqa: E402
from producer.train_files import write_lora  # noqa: E402

SIZE = 64
STEPS = 3
RANK = 4
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_TARGETS = ATTENTION + ["ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PROMPTS = ["a red fox under snow, in style_00", "in style_00"]  # image 0 has a caption, image 1 none
HP = dict(betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
SCENARIOS = {  # name: the train: settings (ours) it stands for
    "te": dict(text_encoder=dict(rank=2, lr=5e-5), lr_ratio_b=16.0, lr=1e-4, prompts=PROMPTS),
    "targets": dict(targets=ALL_TARGETS, rank=2, alpha=4.0, lr=1e-4, lr_scheduler="constant_with_warmup",
                    lr_warmup_steps=2),
    "knobs": dict(batch_size=2, gradient_accumulation=2, lr=1e-4, lr_scheduler="cosine", lr_warmup_steps=1,
                  snr_gamma=5.0, noise_offset=0.1),
}
FILE_SEED = 93
INIT_SEED = 7  # each scenario's A init: a Generator of this seed, in sorted key order (our Lora.create's rule)
GRAD_STEPS = {"targets": (0, 2)}  # steps whose gradients are stored (all by default): keeps the file small


def filled(module):
    module.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) if v.is_floating_point() else v
                            for k, v in module.state_dict().items()})
    return module.eval().requires_grad_(False)


def config(d):
    return {k: v for k, v in d.items() if not k.startswith("_")}


def text_model():
    return filled(CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k != "architectures"})))


def tokenize(prompts):
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_folder(Path(tmp), pad_token="!")
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def lora_params(model, prefix):
    """{diffusers key: peft parameter} of a model with a peft adapter, as the script saves them."""
    peft_state = get_peft_model_state_dict(model)
    names = dict(zip(peft_state, convert_state_dict_to_diffusers(peft_state)))
    params = dict(model.named_parameters())
    return {f"{prefix}.{names[k]}": params[k.replace(".weight", ".default.weight")] for k in peft_state}


def models(s):
    """(unet, text encoder, {key: LoRA param}) with peft adapters as train_dreambooth_lora.py adds them."""
    unet = filled(UNet2DConditionModel(**config(UNET)))
    rank = s.get("rank", RANK)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=s.get("alpha", rank), init_lora_weights="gaussian",
                                target_modules=s.get("targets", ATTENTION)))
    lora = lora_params(unet, "unet")
    text = text_model()
    if "text_encoder" in s:
        r = s["text_encoder"]["rank"]
        text.add_adapter(LoraConfig(r=r, lora_alpha=r, init_lora_weights="gaussian", target_modules=TEXT_TARGETS))
        lora.update(lora_params(text, "text_encoder"))
    return unet, text, dict(sorted(lora.items()))


def lr_of(s, key):
    te = s.get("text_encoder")
    lr = te["lr"] if te and key.startswith("text_encoder.") else s["lr"]
    return lr * s.get("lr_ratio_b", 1.0) if key.endswith(".up.weight") else lr  # LoRA+ grouping


def train(s, prediction_type, init, images, draws, ids, prompt_index, vae):
    unet, text, lora = models(s)
    with torch.no_grad():
        for key, param in lora.items():
            param.copy_(torch.from_numpy(init[key]))
    optimizer = torch.optim.AdamW([{"params": [p], "lr": lr_of(s, k)} for k, p in lora.items()], **HP)
    schedule = get_scheduler(s.get("lr_scheduler", "constant"), optimizer=optimizer,
                             num_warmup_steps=s.get("lr_warmup_steps", 0), num_training_steps=STEPS)
    scheduler = DDPMScheduler.from_config({**config(SCHEDULER), "prediction_type": prediction_type})
    batch, accumulation = s.get("batch_size", 1), s.get("gradient_accumulation", 1)
    losses, grads = [], []
    for step in draws:  # batch x accumulation samples per optimiser step
        micro = []
        for m in range(accumulation):
            samples = step[m * batch:(m + 1) * batch]
            image = [d[0] for d in samples]
            with torch.no_grad():
                dist = vae.encode(torch.from_numpy(images[image])).latent_dist
                posterior = torch.from_numpy(np.stack([d[1] for d in samples]))
                z0 = (dist.mean + dist.std * posterior) * vae.config.scaling_factor
            noise = torch.from_numpy(np.stack([d[2] for d in samples]))
            if s.get("noise_offset"):
                offset = torch.from_numpy(np.stack([d[4] for d in samples]))[:, :, None, None]
                noise = noise + s["noise_offset"] * offset
            timesteps = torch.tensor([d[3] for d in samples], dtype=torch.long)
            noisy = scheduler.add_noise(z0, noise, timesteps)
            target = scheduler.get_velocity(z0, noise, timesteps) if prediction_type == "v_prediction" else noise
            context = text(ids[prompt_index[image]])[0]
            pred = unet(noisy, timesteps, context).sample
            if s.get("snr_gamma") is None:
                loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            else:
                snr = compute_snr(scheduler, timesteps)
                weight = torch.stack([snr, s["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
                weight = weight + 1 if prediction_type == "v_prediction" else weight
                loss = F.mse_loss(pred.float(), target.float(), reduction="none")
                loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * weight).mean()
            (loss / accumulation).backward()
            micro.append(loss.item())
        losses.append(np.mean(micro))
        grads.append(flat(p.grad for p in lora.values()))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return {"loss": np.array(losses, np.float32), "grads": np.stack(grads), "weights": flat(lora.values())}


def flat(tensors) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for t in tensors]).astype(np.float32)


def scenario(name, s, rng, images, vae):
    _, _, lora = models(s)
    init_rng = np.random.default_rng(INIT_SEED)
    init = {k: (init_rng.standard_normal(tuple(v.shape)) / v.shape[0]).astype(np.float32)
            if k.endswith((".down.weight", ".lora_A.weight")) else np.zeros(tuple(v.shape), np.float32)
            for k, v in lora.items()}
    n = s.get("batch_size", 1) * s.get("gradient_accumulation", 1)
    draws = [[(int(rng.integers(0, 2)), rng.standard_normal((4, 8, 8)).astype(np.float32),
               rng.standard_normal((4, 8, 8)).astype(np.float32), int(rng.integers(0, 1000)),
               rng.standard_normal(4).astype(np.float32)) for _ in range(n)] for _ in range(STEPS)]
    prompts = s.get("prompts", ["style_00"])
    distinct = sorted(set(prompts), key=prompts.index)
    prompt_index = np.array([distinct.index(p) for p in prompts] * (2 // len(prompts)), np.int64)
    ids = tokenize(distinct)
    out = {"images": images, "keys": np.array(list(lora)),
           "shapes": np.array([",".join(map(str, v.shape)) for v in lora.values()]),
           "init_seed": np.array(INIT_SEED), "prompts": np.array([distinct[i] for i in prompt_index]),
           "image": np.array([[d[0] for d in step] for step in draws]),
           "posterior_noise": np.array([[d[1] for d in step] for step in draws]),
           "noise": np.array([[d[2] for d in step] for step in draws]),
           "timestep": np.array([[d[3] for d in step] for step in draws]),
           "offset": np.array([[d[4] for d in step] for step in draws]),
           "grad_steps": np.array(GRAD_STEPS.get(name, range(STEPS)))}
    types = ("v_prediction", "epsilon") if name == "knobs" else ("v_prediction",)
    for prediction_type in types:
        for key, value in train(s, prediction_type, init, images, draws, ids, prompt_index, vae).items():
            out[f"{prediction_type}/{key}"] = value[out["grad_steps"]] if key == "grads" else value
    return out


def file_check():
    """A LoRA with text-encoder and conv keys, written by our writer and read by diffusers."""
    s = {"targets": ALL_TARGETS, "text_encoder": {"rank": 2}}
    _, _, lora = models(s)
    state = {k: tiny_param(k, tuple(v.shape), FILE_SEED) for k, v in lora.items()}
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ids = tokenize(["a red fox under snow, in style_00"])
    unet, text = filled(UNet2DConditionModel(**config(UNET))), text_model()
    with torch.no_grad():
        base_text = text(ids)[0]
        base = unet(torch.from_numpy(x), 500, base_text).sample.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        write_lora(state, Path(tmp) / "pytorch_lora_weights.bin", fsync=False)
        loaded, alphas = StableDiffusionPipeline.lora_state_dict(tmp)
        StableDiffusionPipeline.load_lora_into_unet(loaded, alphas, unet)
        StableDiffusionPipeline.load_lora_into_text_encoder(loaded, alphas, text)
    assert sorted(loaded) == sorted(state), "diffusers read other keys than we wrote"
    with torch.no_grad():
        context = text(ids)[0]
        output = unet(torch.from_numpy(x), 500, context).sample.numpy()
    for what, a, b in (("text", context.numpy(), base_text.numpy()), ("unet", output, base)):
        change = np.abs(a - b).max() / np.abs(b).max()
        assert change > 1e-3, f"the LoRA changes the {what} output by only {change}"
    return {"keys": np.array(list(lora)), "shapes": np.array([",".join(map(str, v.shape)) for v in lora.values()]),
            "seed": np.array(FILE_SEED), "x": x, "ids": ids.numpy(), "context": context.numpy(),
            "base_context": base_text.numpy(), "out": output, "base": base}


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(2025)
    pixels = rng.integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
    images = ((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
    vae = filled(AutoencoderKL(**config(VAE)))
    files = {name: scenario(name, s, rng, images, vae) for name, s in SCENARIOS.items()}
    files["file"] = file_check()
    for name, out in files.items():
        path = ROOT / "tests" / "golden" / f"train_recipes_{name}.npz"
        np.savez_compressed(path, **out)
        print(f"wrote {path} ({path.stat().st_size} bytes): " +
              ", ".join(f"{k} {out[k]}" for k in out if k.endswith("/loss")))


if __name__ == "__main__":
    main()
