"""The engine's one DDIM loop, both ways, and its model wrappers (guidance, text conditioning), on stub models."""
import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.ddim import DDIMScheduler
from common.sd.sampling import ClassifierFreeGuidance, TextConditioned, ddim
from common.devkit.tiny_weights import SCHEDULER

jt = load_jittor()


def _latent(seed=0, shape=(2, 4, 8, 8)):
    return jt.array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("steps", [5, 10, 50])
def test_inversion_then_sampling_is_exact_for_a_constant_epsilon_model(steps):
    scheduler = DDIMScheduler.from_config(dict(SCHEDULER, prediction_type="epsilon"))
    eps = _latent(1)
    model = lambda x, t: eps
    z0 = _latent(0)
    x_T = ddim(model, scheduler, z0, steps, inverse=True)
    back = ddim(model, scheduler, x_T, steps)
    assert np.abs(x_T.numpy() - z0.numpy()).max() > 0.5  # it did move
    np.testing.assert_allclose(back.numpy(), z0.numpy(), atol=2e-5)


def test_each_step_is_hook_then_model_call_then_progress_at_the_timestep_values():
    scheduler = DDIMScheduler.from_config(SCHEDULER)
    events = []

    def model(x, t):
        events.append(("model", t))
        return x * 0.0

    hooks = dict(before_call=lambda t: events.append(("before", t)),
                 after_step=lambda i, n: events.append(("after", i, n)))
    ddim(model, scheduler, _latent(), 5, inverse=True, **hooks)
    up = [1, 201, 401, 601, 801]
    assert events == [e for i, t in enumerate(up) for e in (("before", t), ("model", t), ("after", i + 1, 5))]
    events.clear()
    ddim(model, scheduler, _latent(), 5, **hooks)
    assert [e[1] for e in events if e[0] == "model"] == up[::-1] == scheduler.timesteps(5)


def test_the_step_functions_are_the_schedulers():
    scheduler = DDIMScheduler.from_config(SCHEDULER)
    out, x = _latent(3), _latent(4)
    model = lambda x_, t: out
    np.testing.assert_array_equal(ddim(model, scheduler, x, 1).numpy(), scheduler.step(out, 1, x, 1).numpy())
    np.testing.assert_array_equal(ddim(model, scheduler, x, 1, inverse=True).numpy(),
                                  scheduler.invert_step(out, 1, x, 1).numpy())


class _StubUNet:
    """unet(x, t, context) = x·context[:, 0, 0] + t, recording each call's batch and dtypes."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append((x.shape[0], str(x.dtype), str(context.dtype)))
        return x * context[:, 0, 0].reshape((-1, 1, 1, 1)) + t


def _context(values, dtype="float32"):
    c = np.zeros((len(values), 77, 8), np.float32)
    c[:, 0, 0] = values
    return jt.array(c).cast(dtype)


def test_guidance_is_one_unet_call_on_both_halves_combined_with_the_scale():
    unet, x = _StubUNet(), _latent(5)
    out = ClassifierFreeGuidance(unet, _context([1.0, 2.0, 3.0, 5.0]), 7.5)(x, 11).numpy()
    assert unet.calls == [(4, "float32", "float32")]
    uncond = x.numpy() * np.array([1.0, 2.0])[:, None, None, None] + 11
    cond = x.numpy() * np.array([3.0, 5.0])[:, None, None, None] + 11
    np.testing.assert_allclose(out, uncond + 7.5 * (cond - uncond), rtol=1e-5, atol=1e-4)


def test_text_conditioning_broadcasts_one_context_and_runs_the_unet_in_its_dtype():
    unet, x = _StubUNet(), _latent(6, (3, 4, 8, 8))
    out = TextConditioned(unet, _context([2.0], "float16"))(x, 0)
    assert unet.calls == [(3, "float16", "float16")] and str(out.dtype) == "float32"
    np.testing.assert_allclose(out.numpy(), 2.0 * x.numpy(), rtol=1e-3)
