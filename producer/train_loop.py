"""The DreamBooth-LoRA training step, as JDiffusion's examples/dreambooth/train.py computes it, with the
recipe options of diffusers' train_dreambooth_lora.py and peft (docs/training.md).

Per sample (a batch is B of them):
  z₀ = scaling_factor · (μ + σ·n)          the VAE posterior *sample* of the image (n: posterior noise)
  ε  = noise (+ noise_offset · o per channel, when set)
  z_t = √ā_t·z₀ + √(1−ā_t)·ε               DDPM's add_noise, ā from the model's scheduler config
  target = √ā_t·ε − √(1−ā_t)·z₀ (v_prediction) or ε (epsilon)
  loss = mean((UNet(z_t, t, text(prompt)) − target)²) in float32, or with `snr_gamma` each sample's mean
         weighted by min(SNR_t, γ)/SNR_t (+1 for v_prediction), as diffusers' DreamBooth scripts do
With prior preservation (`train.prior`) a batch is its B instance samples followed by B class samples (a
class image and the class prompt), in one UNet call; the prediction is split in two halves and
  loss = (the loss above, of the instance half) + weight · mean((class half − its target)²)
as diffusers' train_dreambooth_lora.py computes it with --with_prior_preservation;
then AdamW with decoupled weight decay (`AdamW` below) over the gradients summed across
`gradient_accumulation` micro-batches (each loss divided by their count, as accelerate does), at the lr of
the schedule (`lr_factor`). Only the LoRA (common.sd.lora_layers) is trained; the UNet, VAE and text
encoder are frozen. The VAE is deterministic, so each image's posterior (μ, σ) is computed once; the
sample is drawn per step in NumPy, which is what encoding every step gives. Without a text-encoder LoRA
each distinct prompt is encoded once; with one, the batch's prompts are encoded every step.
"""
import math

import numpy as np

from common.jittor_env import load_jittor
from common.sd.lora_layers import TEXT_TARGETS, Lora, freeze, lora_half
from producer.train_data import Draw

jt = load_jittor()


def lr_factor(train, k: int) -> float:
    """The lr multiplier of optimiser step k + 1 (k steps taken before), as diffusers' get_scheduler."""
    warmup = train.lr_warmup_steps
    if train.lr_scheduler == "constant":
        return 1.0
    if k < warmup:
        return k / max(1, warmup)
    if train.lr_scheduler == "constant_with_warmup":
        return 1.0
    progress = (k - warmup) / max(1, train.steps - warmup)  # cosine, half a period
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


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

    def __init__(self, params: list, lr, betas: tuple, eps: float, weight_decay: float):
        """`lr` one float, or one per parameter (peft's LoRA+ groups: B at a multiple of A's)."""
        self.params, self.betas, self.eps, self.weight_decay = params, betas, eps, weight_decay
        self.lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)
        self.m = [jt.zeros(p.shape, "float32").stop_grad() for p in params]
        self.v = [jt.zeros(p.shape, "float32").stop_grad() for p in params]
        self.step_count = 0

    def step(self, grads: list, factor: float = 1.0) -> None:
        """One update at each parameter's lr times `factor` (the lr schedule's)."""
        self.step_count += 1
        (b1, b2), k = self.betas, self.step_count
        root_bc2 = math.sqrt(1 - b2 ** k)
        for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs):
            lr = lr * factor
            step_size, decay = lr / (1 - b1 ** k), 1 - lr * self.weight_decay
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
        models, targets, ranks = {"unet": sd.unet}, {"unet": train.targets}, {"unet": train.rank}
        te = train.text_encoder
        if te is not None:
            models["text_encoder"], targets["text_encoder"] = sd.text_encoder, TEXT_TARGETS
            ranks["text_encoder"] = te.rank
        self.lora = Lora.create(models, targets, ranks, rng, {"unet": train.alpha})
        self.optimizer = AdamW(self.lora.params, lr=[self._lr(key) for key in self.lora.keys],
                               betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_epsilon,
                               weight_decay=train.adam_weight_decay)
        self._grads = None
        scheduler = sd.scheduler
        self.alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float32)
        self.prediction_type = scheduler.prediction_type
        self.num_timesteps = scheduler.num_train_timesteps
        self.mean = self.std = self.context = self.ids = None
        self.prompt_index = None  # per image: its prompt's row in `context` / `ids`
        self.prior_mean = self.prior_std = self.prior_row = None  # the class images' posteriors, prompt row

    def _lr(self, key: str) -> float:
        """A LoRA tensor's lr: the text encoder's own lr if set, B (up) at lr_ratio_b times (LoRA+)."""
        t = self.train
        lr = t.text_encoder.lr if key.startswith("text_encoder.") and t.text_encoder.lr is not None else t.lr
        return lr * t.lr_ratio_b if lora_half(key) == "up" else lr

    @property
    def trains_text_encoder(self) -> bool:
        return self.train.text_encoder is not None

    @property
    def samples_per_step(self) -> int:
        """Draws one optimiser step takes: batch size x gradient accumulation."""
        return self.train.batch_size * self.train.gradient_accumulation

    # ------------------------------------------------------------------ data

    def set_data(self, images: np.ndarray, prompts, beat=lambda phase: None, class_images: np.ndarray = None,
                 class_prompt: str = None) -> None:
        """Encode the images' posteriors (float32 (N, 3, S, S) in [-1, 1]) once, and the prompts (one per
        image, or one for all): once each without a text-encoder LoRA, else tokenised for every step. With
        prior preservation, the class images and the class prompt likewise."""
        self.mean, self.std = self._posteriors(images, beat, "train encode")
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        distinct = sorted(set(prompts), key=prompts.index)
        self.prompt_index = np.array([distinct.index(p) for p in prompts], dtype=np.int64)
        if class_images is not None:
            self.prior_mean, self.prior_std = self._posteriors(class_images, beat, "train encode class image")
            distinct += [] if class_prompt in distinct else [class_prompt]
            self.prior_row = distinct.index(class_prompt)
        self.ids = np.asarray(self.sd.tokenizer(distinct), dtype=np.int32)
        if not self.trains_text_encoder:
            self.context = self.sd.encode_prompt(distinct).float32().numpy()

    def _posteriors(self, images: np.ndarray, beat, phase: str) -> tuple:
        means, stds = [], []
        with jt.no_grad():
            for i, image in enumerate(images):  # one at a time: the VAE encoder's activations are the largest
                mean, logvar = self.sd.vae.encode(jt.array(image[None].astype(np.float32)))
                means.append(mean.numpy()[0])
                stds.append(jt.exp(logvar * 0.5).numpy()[0])
                beat(f"{phase} {i + 1}/{len(images)}")
        return np.stack(means).astype(np.float32), np.stack(stds).astype(np.float32)

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.mean.shape[1:])

    def inputs(self, draws: list, prior: bool = False):
        """(z_t, target) of a batch of draws (of class images when `prior`), float32 NumPy (B, 4, h, w)."""
        scaling = np.float32(self.sd.vae.scaling_factor)
        means, stds = (self.prior_mean, self.prior_std) if prior else (self.mean, self.std)
        z_ts, targets = [], []
        for draw in draws:
            z0 = (means[draw.image] + stds[draw.image] * draw.posterior_noise) * scaling
            a = self.alphas_cumprod[draw.timestep]
            sa, sb = np.float32(a) ** np.float32(0.5), (np.float32(1.0) - a) ** np.float32(0.5)
            noise = draw.noise.astype(np.float32)
            if self.train.noise_offset:
                noise = noise + np.float32(self.train.noise_offset) * draw.offset.astype(np.float32)[:, None, None]
            z_ts.append(sa * z0 + sb * noise)
            targets.append(sa * noise - sb * z0 if self.prediction_type == "v_prediction" else noise)
        return np.stack(z_ts).astype(np.float32), np.stack(targets).astype(np.float32)

    def snr_weights(self, timesteps) -> np.ndarray:
        """Min-SNR weights (B,) float32: min(SNR, γ)/SNR, +1 for v_prediction (diffusers' DreamBooth scripts)."""
        a = self.alphas_cumprod[np.asarray(timesteps)]
        snr = (a ** np.float32(0.5) / (np.float32(1.0) - a) ** np.float32(0.5)) ** 2
        weight = np.minimum(snr, np.float32(self.train.snr_gamma)) / snr
        return (weight + 1 if self.prediction_type == "v_prediction" else weight).astype(np.float32)

    # ------------------------------------------------------------------ step

    def context_of(self, draws: list, n_prior: int = 0):
        """The batch's text context Var (B, 77, D), then `n_prior` rows of the class prompt: encoded once,
        or through the text encoder's LoRA."""
        rows = self.prompt_index[[d.image for d in draws]]
        if n_prior:
            rows = np.concatenate([rows, np.full(n_prior, self.prior_row, np.int64)])
        if self.trains_text_encoder:
            return self.sd.text_encoder(jt.array(self.ids[rows]))
        return jt.array(self.context[rows])

    def loss(self, draws, prior_draws=()):
        """The loss Var of one batch (a Draw or a list, and as many class draws with prior preservation;
        the LoRA must be attached)."""
        draws = [draws] if isinstance(draws, Draw) else list(draws)
        prior_draws = list(prior_draws)
        z_t, target = self.inputs(draws)
        if prior_draws:  # instance and class samples in one batch, as diffusers' collate_fn builds it
            prior_z_t, prior_target = self.inputs(prior_draws, prior=True)
            z_t, target = np.concatenate([z_t, prior_z_t]), np.concatenate([target, prior_target])
        samples = draws + prior_draws
        context = self.context_of(draws, len(prior_draws)).cast(self.sd.unet.conv_in.weight.dtype)
        timesteps = samples[0].timestep if len(samples) == 1 else np.array([d.timestep for d in samples], np.int64)
        pred = self.sd.unet(jt.array(z_t), timesteps, context).float32()
        diff = pred - jt.array(target)
        if prior_draws:
            diff, prior_diff = diff[:len(draws)], diff[len(draws):]
        if self.train.snr_gamma is None:
            loss = (diff * diff).mean()
        else:  # the instance half's timesteps weigh it; the class half stays a plain mean
            per_sample = (diff * diff).reshape((len(draws), -1)).mean(dim=1)
            loss = (per_sample * jt.array(self.snr_weights([d.timestep for d in draws]))).mean()
        if prior_draws:
            loss = loss + self.train.prior.weight * (prior_diff * prior_diff).mean()
        return loss

    @property
    def step_count(self) -> int:
        """Optimiser steps taken."""
        return self.optimizer.step_count

    def step(self, draws, prior_draws=()) -> float:
        """One optimiser step on `draws` (a Draw, or batch size x accumulation of them) and, with prior
        preservation, as many class draws; returns the mean loss of its micro-batches. A NaN/inf loss
        raises before the update."""
        draws = [draws] if isinstance(draws, Draw) else list(draws)
        prior_draws = list(prior_draws)
        size = self.train.batch_size
        batches = [draws[i:i + size] for i in range(0, len(draws), size)]
        grads, values = None, []
        for i, batch in enumerate(batches):
            loss = self.loss(batch, prior_draws[i * size:(i + 1) * size])
            scaled = loss if len(batches) == 1 else loss / len(batches)
            got = jt.grad(scaled, self.lora.params, retain_graph=False)  # frees the forward graph as it goes
            jt.sync([loss] + got)
            values.append(float(loss.item()))
            if not math.isfinite(values[-1]):
                raise TrainingDiverged(f"style {self.style}: training diverged at step {self.step_count + 1} "
                                       f"(loss {values[-1]}); lower train.lr or check the style's images")
            grads = got if grads is None else [a + b for a, b in zip(grads, got)]
        self.optimizer.step(grads, lr_factor(self.train, self.step_count))
        self._grads = grads
        return values[0] if len(values) == 1 else float(np.mean(values))

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
