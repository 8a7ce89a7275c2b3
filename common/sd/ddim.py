"""DDIM (eta 0) for SD 2.x and its inversion, equal to diffusers' DDIMScheduler / DDIMInverseScheduler.

Every move is: split the model output at the latent's own noise level a into (x̂₀, ε̂), then rebuild at
the target level a′: x′ = √a′·x̂₀ + √(1−a′)·ε̂. Sampling goes from ā(t) down to ā(t−Δ); inversion from
ā(t−Δ) up to ā(t). ā(t<0) is the final level ā(0) (`set_alpha_to_one` false) or 1.
The arithmetic is plain `*`/`+` with Python-float coefficients, so it runs on jittor Vars on the device
(and on NumPy arrays) with no round trip.
"""
import math

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


class DDIMScheduler:
    def __init__(self, num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 trained_betas=None, prediction_type="epsilon", steps_offset=0, set_alpha_to_one=True,
                 timestep_spacing="leading", clip_sample=False, thresholding=False, rescale_betas_zero_snr=False):
        if trained_betas is not None:
            betas = np.asarray(trained_betas, dtype=np.float32)
        elif beta_schedule == "scaled_linear":  # float32 as diffusers computes it
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float32) ** 2
        elif beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
        else:
            raise ValueError(f"scheduler beta_schedule {beta_schedule!r} is unsupported; use scaled_linear or linear")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler prediction_type {prediction_type!r} is unsupported; "
                             "use v_prediction or epsilon")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"scheduler timestep_spacing {timestep_spacing!r} is unsupported; use one of {SPACINGS}")
        if clip_sample or thresholding or rescale_betas_zero_snr:
            raise ValueError("scheduler clip_sample/thresholding/rescale_betas_zero_snr are unsupported; "
                             "set them false (SD 2.1 does)")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.steps_offset = steps_offset
        self.timestep_spacing = timestep_spacing
        self.alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    @classmethod
    def from_config(cls, config: dict) -> "DDIMScheduler":
        """Build from a scheduler_config.json dict; keys we do not use (`_class_name`, …) are ignored."""
        names = cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]
        return cls(**{k: v for k, v in config.items() if k in names})

    def timesteps(self, n: int) -> list:
        """The n sampling timesteps, descending (leading, 50 steps: 981, 961, …, 1)."""
        N = self.num_train_timesteps
        if not 0 < n <= N:
            raise ValueError(f"number of DDIM steps must be in 1..{N}, got {n}")
        if self.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (N // n)).round()[::-1] + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(N, 0, -N / n)) - 1
        else:
            ts = np.linspace(0, N - 1, n).round()[::-1]
        return [int(t) for t in ts]

    def alpha(self, t: int) -> float:
        """ā(t); ā(t<0) is the final level."""
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def split(self, out, x, a: float):
        """(x̂₀, ε̂) of model output `out` for a latent x at level a; x = √a·x̂₀ + √(1−a)·ε̂."""
        sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
        if self.prediction_type == "v_prediction":
            return x * sa - out * sb, out * sa + x * sb
        return (x - out * sb) * (1.0 / sa), out

    def move(self, out, x, a: float, a_next: float):
        """The DDIM (eta 0) move of x from level a to level a_next."""
        x0, eps = self.split(out, x, a)
        return x0 * math.sqrt(a_next) + eps * math.sqrt(1.0 - a_next)

    def step(self, out, t: int, x, n: int):
        """Sampling step at t of an n-step schedule: x_t → x_{t−Δ} (= DDIMScheduler.step prev_sample)."""
        delta = self.num_train_timesteps // n
        return self.move(out, x, self.alpha(t), self.alpha(t - delta))

    def invert_step(self, out, t: int, x, n: int):
        """Inversion step to t: x_{t−Δ} → x_t, `out` = UNet(x_{t−Δ}, t) (= DDIMInverseScheduler.step)."""
        delta = self.num_train_timesteps // n
        return self.move(out, x, self.alpha(min(t - delta, self.num_train_timesteps - 1)), self.alpha(t))
