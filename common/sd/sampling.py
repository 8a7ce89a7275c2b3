"""The one DDIM (eta 0) loop: sampling (descending timesteps, `step`) and inversion (ascending, `invert_step`).

A model is any callable `model(x, t) -> out` on fp32 latents with an int timestep; `TextConditioned` and
`ClassifierFreeGuidance` make one from a UNet and text embeddings. The loop knows nothing of stages or
leases: `before_call(t)` runs before each model call with that call's timestep value (StyleID keys its
recorded features by it), `after_step(i, steps)` after each step (a stage renews its lease there).
Every Var alive is materialised after each step, so Jittor's lazy graph never spans two steps.
"""
from typing import Callable, Optional

from common.jittor_env import load_jittor

jt = load_jittor()


def ddim(model: Callable, scheduler, x, steps: int, *, inverse: bool = False,
         before_call: Optional[Callable[[int], None]] = None,
         after_step: Optional[Callable[[int, int], None]] = None):
    """Run `steps` DDIM steps of `model` from x; return the final latent.

    Sampling at t uses the model's output on x_t (`scheduler.step`: x_t -> x_{t-Δ}); inversion to t uses
    the output at t on x_{t-Δ} (`scheduler.invert_step`: x_{t-Δ} -> x_t), as DDIMInverseScheduler does.
    """
    timesteps = [int(t) for t in scheduler.timesteps(steps)]
    move = scheduler.invert_step if inverse else scheduler.step
    for i, t in enumerate(reversed(timesteps) if inverse else timesteps):
        if before_call is not None:
            before_call(t)
        x = move(model(x, t), t, x, steps)
        jt.sync_all()
        if after_step is not None:
            after_step(i + 1, steps)
    return x


class TextConditioned:
    """The UNet as a model of fp32 latents: conditioned on `context` (B or 1, 77, D) in the UNet's dtype, a
    batch-1 context broadcast over the latents' batch; fp32 output."""

    def __init__(self, unet, context):
        self.unet, self.context = unet, context

    def __call__(self, x, t):
        context = self.context
        if x.shape[0] != context.shape[0]:
            context = context.broadcast((x.shape[0],) + tuple(context.shape[1:]))
        return self.unet(x.cast(context.dtype), t, context).float32()


class ClassifierFreeGuidance:
    """Classifier-free guidance as a model: one UNet call on [x; x] with `context` = [uncond; cond]
    (2B, 77, D), combined as uncond + scale·(cond − uncond), as diffusers' pipeline does."""

    def __init__(self, unet, context, scale: float):
        self.unet, self.context, self.scale = unet, context, scale

    def __call__(self, x, t):
        n = x.shape[0]
        out = self.unet(jt.concat([x, x], dim=0).cast(self.context.dtype), t, self.context).float32()
        uncond, cond = out[:n], out[n:]
        return uncond + self.scale * (cond - uncond)
