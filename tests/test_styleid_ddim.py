"""The DDIM loop StyleID runs both ways (STYLEID.md §2, §9.3), on stub models."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.ddim import DDIMScheduler
from common.devkit.tiny_weights import SCHEDULER
from consumer.features import StepClock
from consumer.ddim_loop import ddim

jt = load_jittor()


def _latent(seed=0):
    return jt.array(np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("steps", [5, 10, 50])
def test_inversion_then_reversion_is_exact_for_a_constant_epsilon_model(steps):
    scheduler = DDIMScheduler.from_config(dict(SCHEDULER, prediction_type="epsilon"))
    eps = _latent(1)
    model = lambda x, t: eps
    z0, clock = _latent(0), StepClock()
    x_T = ddim(model, scheduler, z0, steps, clock, inverse=True)
    back = ddim(model, scheduler, x_T, steps, clock, inverse=False)
    assert np.abs(x_T.numpy() - z0.numpy()).max() > 0.5  # it did move
    np.testing.assert_allclose(back.numpy(), z0.numpy(), atol=2e-5)


def test_the_clock_holds_the_timestep_value_of_each_call_and_is_cleared_after():
    scheduler = DDIMScheduler.from_config(SCHEDULER)
    clock, seen = StepClock(), []

    def model(x, t):
        seen.append((clock.t, t))
        return x * 0.0

    ddim(model, scheduler, _latent(), 5, clock, inverse=True)
    ddim(model, scheduler, _latent(), 5, clock, inverse=False)
    assert seen == [(t, t) for t in (1, 201, 401, 601, 801)] + [(t, t) for t in (801, 601, 401, 201, 1)]
    assert clock.t is None
    with pytest.raises(RuntimeError):
        clock.now()


def test_the_loop_beats_once_per_step():
    beats = []
    ddim(lambda x, t: x * 0.0, DDIMScheduler.from_config(SCHEDULER), _latent(), 5, StepClock(), True,
         beat=beats.append, phase="style inversion")
    assert beats == [f"style inversion {i}/5" for i in range(1, 6)]

