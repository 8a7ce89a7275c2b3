"""The DDIM loop StyleID runs both ways; it sets the shared clock to each call's timestep value."""
from typing import Callable, Optional

from common.jittor_env import load_jittor

from consumer.features import StepClock

jt = load_jittor()

Beat = Optional[Callable[[str], None]]


def ddim(model, scheduler, x, steps: int, clock: StepClock, inverse: bool, beat: Beat = None, phase: str = "ddim"):
    """Run `steps` DDIM steps (eta 0) of `model(x, t) -> out`: ascending inversion or descending reversion.

    Inversion to t uses the output at t on x_{t-Δ} (`invert_step`); reversion at t uses it on x_t (`step`).
    Everything held is materialized after every step, so the lazy graph never spans two steps.
    """
    timesteps = [int(t) for t in scheduler.timesteps(steps)]
    move = scheduler.invert_step if inverse else scheduler.step
    try:
        for i, t in enumerate(reversed(timesteps) if inverse else timesteps):
            clock.t = t
            x = move(model(x, t), t, x, steps)
            jt.sync_all()
            if beat is not None:
                beat(f"{phase} {i + 1}/{steps}")
    finally:
        clock.t = None
    return x
