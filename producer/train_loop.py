"""The DreamBooth-LoRA training step, as JDiffusion's examples/dreambooth/train.py computes it.

Per step, on one image (batch 1), prior preservation off:
  z₀ = scaling_factor · (μ + σ·n)          the VAE posterior *sample* of the image (n: posterior noise)
  z_t = √ā_t·z₀ + √(1−ā_t)·ε               DDPM's add_noise, ā from the model's scheduler config
  target = √ā_t·ε − √(1−ā_t)·z₀ (v_prediction) or ε (epsilon)
  loss = mean((UNet(z_t, t, text(prompt)) − target)²) in float32
then AdamW with decoupled weight decay (PyTorch's update; Jittor's `jt.optim.AdamW` computes the same,
but its default weight decay is 0, so it is always passed). Only the LoRA (common.sd.lora_layers) is
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


class LoraTrainer:
    """One style's LoRA on a loaded `StableDiffusion`: data, step, optimiser, and their exact state."""

    def __init__(self, sd, train, rng: np.random.Generator, style: str = ""):
        self.sd, self.train, self.style = sd, train, style
        for model in (sd.unet, sd.vae, sd.text_encoder):
            freeze(model)
        self.lora = UNetLora.create(sd.unet, train.rank, rng)
        self.optimizer = jt.optim.AdamW(self.lora.params, lr=train.lr, eps=train.adam_epsilon,
                                        betas=(train.adam_beta1, train.adam_beta2),
                                        weight_decay=train.adam_weight_decay)
        scheduler = sd.scheduler
        self.alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float32)
        self.prediction_type = scheduler.prediction_type
        self.num_timesteps = scheduler.num_train_timesteps
        self.mean = self.std = self.context = None
        self.step_count = 0  # optimiser steps taken

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

    def step(self, draw: Draw) -> float:
        """One optimiser step on `draw`; returns the loss. A NaN/inf loss raises before the update."""
        loss = self.loss(draw)
        self.optimizer.backward(loss)
        grads = self.optimizer.param_groups[0]["grads"]
        jt.sync([loss] + list(grads))
        value = float(loss.item())
        if not math.isfinite(value):
            raise TrainingDiverged(f"style {self.style}: training diverged at step {self.step_count + 1} "
                                   f"(loss {value}); lower train.lr or check the style's images")
        self.optimizer.step()
        group = self.optimizer.param_groups[0]
        jt.sync(list(self.lora.params) + list(group["m"]) + list(group["values"]))
        self.step_count += 1
        return value

    def gradients(self) -> dict:
        """{key: float32 array}: the LoRA gradients of the last step."""
        grads = self.optimizer.param_groups[0]["grads"]
        return {k: g.numpy().astype(np.float32) for k, g in zip(self.lora.keys, grads)}

    # ------------------------------------------------------------------ exact state

    def state(self) -> dict:
        """Everything the optimiser carries: {"lora": {...}, "m": {...}, "v": {...}, "step": k}."""
        group = self.optimizer.param_groups[0]
        moments = {name: {k: v.numpy().astype(np.float32) for k, v in zip(self.lora.keys, group[key])}
                   for name, key in (("m", "m"), ("v", "values"))}  # Jittor names the second moment "values"
        return {"lora": self.lora.state(), **moments, "step": self.step_count}

    def restore(self, state: dict) -> None:
        """Put back a `state()`: LoRA values, both moments and the step count, bit for bit."""
        group = self.optimizer.param_groups[0]
        keys = self.lora.keys
        for name in ("lora", "m", "v"):
            if sorted(state[name]) != keys:
                raise ValueError(f"checkpoint {name} keys do not match this model's LoRA")
        for key, p, m, v in zip(keys, self.lora.params, group["m"], group["values"]):
            p.update(jt.array(np.ascontiguousarray(state["lora"][key], np.float32)))
            m.update(jt.array(np.ascontiguousarray(state["m"][key], np.float32)))
            v.update(jt.array(np.ascontiguousarray(state["v"][key], np.float32)))
        self.step_count = self.optimizer.n_step = int(state["step"])
        jt.sync(list(self.lora.params) + list(group["m"]) + list(group["values"]))
