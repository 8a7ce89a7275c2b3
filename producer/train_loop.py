"""The DreamBooth-LoRA training step, as JDiffusion's examples/dreambooth/train.py computes it.

Per step, on one image (batch 1), prior preservation off:
  z₀ = scaling_factor · (μ + σ·n)          the VAE posterior *sample* of the image (n: posterior noise)
  z_t = √ā_t·z₀ + √(1−ā_t)·ε               DDPM's add_noise, ā from the model's scheduler config
  target = √ā_t·ε − √(1−ā_t)·z₀ (v_prediction) or ε (epsilon)
  loss = mean((UNet(z_t, t, text(prompt)) − target)²) in float32
then AdamW with decoupled weight decay (`AdamW` below). Only the LoRA (common.sd.lora_layers) is
trained; the UNet, VAE and text encoder are frozen. The VAE is deterministic, so each image's posterior
(μ, σ) is computed once; the sample is drawn per step in NumPy, which is what encoding every step gives.
"""
import math

import numpy as np

from common.jittor_env import load_jittor
from common.sd.lora_layers import UNetLora, freeze
from producer.train_data import Draw

jt = load_jittor()


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite (the message names the style and the step)."""


class AdamW:
    """PyTorch's AdamW: for step k (from 1), p ← p·(1 − lr·wd) − lr/(1−β1^k) · m / (√(v/(1−β2^k)) + eps) with
    m ← β1·m + (1−β1)·g and v ← β2·v + (1−β2)·g².

    Jittor's `jt.optim.AdamW` has the same formula (with weight decay 0 unless passed) but its fused
    update, compiled with fast math, returns NaN for the square root of a subnormal v: an entry whose
    gradient is ~1e-21 (the q/k of a self-attention over a single token get exactly such gradients)
    poisons its weight. Here v is floored at 1e-30 inside the square root, which changes the denominator
    by less than 1e-6 of eps.
    """

    def __init__(self, params: list, lr: float, betas: tuple, eps: float, weight_decay: float):
        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, betas, eps, weight_decay
        self.m = [jt.zeros(p.shape, "float32").stop_grad() for p in params]
        self.v = [jt.zeros(p.shape, "float32").stop_grad() for p in params]
        self.step_count = 0

    def step(self, grads: list) -> None:
        self.step_count += 1
        (b1, b2), k = self.betas, self.step_count
        step_size, root_bc2 = self.lr / (1 - b1 ** k), math.sqrt(1 - b2 ** k)
        decay = 1 - self.lr * self.weight_decay
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.update(b1 * m + (1 - b1) * g)
            v.update(b2 * v + (1 - b2) * g * g)
            denom = jt.sqrt(jt.maximum(v, 1e-30)) / root_bc2 + self.eps
            p.update(p * decay - step_size * m / denom)
        jt.sync(list(self.params) + self.m + self.v)


class LoraTrainer:
    """One style's LoRA on a loaded `StableDiffusion`: data, step, optimiser, and their exact state."""

    def __init__(self, sd, train, rng: np.random.Generator, style: str = ""):
        self.sd, self.train, self.style = sd, train, style
        for model in (sd.unet, sd.vae, sd.text_encoder):
            freeze(model)
        self.lora = UNetLora.create(sd.unet, train.rank, rng)
        self.optimizer = AdamW(self.lora.params, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2),
                               eps=train.adam_epsilon, weight_decay=train.adam_weight_decay)
        self._grads = None
        scheduler = sd.scheduler
        self.alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float32)
        self.prediction_type = scheduler.prediction_type
        self.num_timesteps = scheduler.num_train_timesteps
        self.mean = self.std = self.context = None

    # ------------------------------------------------------------------ data

    def set_data(self, images: np.ndarray, prompt: str, beat=lambda phase: None) -> None:
        """Encode the images' posteriors (float32 (N, 3, S, S) in [-1, 1]) and the instance prompt, once."""
        means, stds = [], []
        with jt.no_grad():
            for i, image in enumerate(images):  # one at a time: the VAE encoder's activations are the largest
                mean, logvar = self.sd.vae.encode(jt.array(image[None].astype(np.float32)))
                means.append(mean.numpy()[0])
                stds.append(jt.exp(logvar * 0.5).numpy()[0])
                beat(f"train encode {i + 1}/{len(images)}")
            self.context = self.sd.encode_prompt([prompt]).float32().numpy()
        self.mean, self.std = np.stack(means).astype(np.float32), np.stack(stds).astype(np.float32)

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.mean.shape[1:])

    def inputs(self, draw: Draw):
        """(z_t, target) of one draw, float32 NumPy (1, 4, h, w)."""
        scaling = np.float32(self.sd.vae.scaling_factor)
        z0 = (self.mean[draw.image] + self.std[draw.image] * draw.posterior_noise) * scaling
        a = self.alphas_cumprod[draw.timestep]
        sa, sb = np.float32(a) ** np.float32(0.5), (np.float32(1.0) - a) ** np.float32(0.5)
        noise = draw.noise.astype(np.float32)
        z_t = sa * z0 + sb * noise
        target = sa * noise - sb * z0 if self.prediction_type == "v_prediction" else noise
        return z_t[None].astype(np.float32), target[None].astype(np.float32)

    # ------------------------------------------------------------------ step

    def loss(self, draw: Draw):
        """The step's loss Var (the LoRA processors must be attached)."""
        z_t, target = self.inputs(draw)
        context = jt.array(self.context).cast(self.sd.unet.conv_in.weight.dtype)
        pred = self.sd.unet(jt.array(z_t), draw.timestep, context).float32()
        diff = pred - jt.array(target)
        return (diff * diff).mean()

    @property
    def step_count(self) -> int:
        """Optimiser steps taken."""
        return self.optimizer.step_count

    def step(self, draw: Draw) -> float:
        """One optimiser step on `draw`; returns the loss. A NaN/inf loss raises before the update."""
        loss = self.loss(draw)
        grads = jt.grad(loss, self.lora.params, retain_graph=False)  # frees the forward graph as it goes
        jt.sync([loss] + grads)
        value = float(loss.item())
        if not math.isfinite(value):
            raise TrainingDiverged(f"style {self.style}: training diverged at step {self.step_count + 1} "
                                   f"(loss {value}); lower train.lr or check the style's images")
        self.optimizer.step(grads)
        self._grads = grads
        return value

    def gradients(self) -> dict:
        """{key: float32 array}: the LoRA gradients of the last step."""
        return {k: g.numpy().astype(np.float32) for k, g in zip(self.lora.keys, self._grads)}

    # ------------------------------------------------------------------ exact state

    def state(self) -> dict:
        """Everything the optimiser carries: {"lora": {...}, "m": {...}, "v": {...}, "step": k}."""
        def arrays(vars_):
            return {k: v.numpy().astype(np.float32) for k, v in zip(self.lora.keys, vars_)}

        return {"lora": arrays(self.lora.params), "m": arrays(self.optimizer.m), "v": arrays(self.optimizer.v),
                "step": self.step_count}

    def restore(self, state: dict) -> None:
        """Put back a `state()`: LoRA values, both moments and the step count, bit for bit."""
        keys = self.lora.keys
        for name in ("lora", "m", "v"):
            if sorted(state[name]) != keys:
                raise ValueError(f"checkpoint {name} keys do not match this model's LoRA")
        for name, vars_ in (("lora", self.lora.params), ("m", self.optimizer.m), ("v", self.optimizer.v)):
            for key, var in zip(keys, vars_):
                var.update(jt.array(np.ascontiguousarray(state[name][key], np.float32)))
        self.optimizer.step_count = int(state["step"])
        jt.sync(list(self.lora.params) + self.optimizer.m + self.optimizer.v)
