"""DDIM sampling and inversion equal diffusers' DDIMScheduler / DDIMInverseScheduler (golden ddim.npz)."""
from pathlib import Path

import numpy as np
import pytest

from common.sd.ddim import DDIMScheduler
from common.devkit.tiny_weights import SCHEDULER

GOLDEN = np.load(Path(__file__).parent / "golden" / "ddim.npz")
PREDICTIONS = ("v_prediction", "epsilon")


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def scheduler(prediction_type="v_prediction", **extra):
    return DDIMScheduler.from_config({**SCHEDULER, "prediction_type": prediction_type, **extra})


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [5, 25, 50])
def test_timesteps_match_diffusers(spacing, n):
    assert scheduler(timestep_spacing=spacing).timesteps(n) == GOLDEN[f"timesteps_{spacing}_{n}"].tolist()


def test_sd21_schedule_values():
    s = scheduler()
    assert s.timesteps(25)[:2] == [961, 921] and s.timesteps(50)[0] == 981 and s.timesteps(50)[-1] == 1
    assert rel(s.alphas_cumprod, GOLDEN["alphas_cumprod"]) < 1e-6
    assert s.alpha(-1) == pytest.approx(0.99915, abs=1e-5) and s.alpha(999) == pytest.approx(0.0046601, rel=1e-4)


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_single_steps_match_diffusers(pred):
    s, x, out = scheduler(pred), GOLDEN["x"], GOLDEN["outs"][0]
    for key in GOLDEN.files:
        if key.startswith(f"{pred}_step_") or key.startswith(f"{pred}_invert_") and key[-1].isdigit():
            kind, n, t = key[len(pred) + 1:].split("_")
            fn = s.step if kind == "step" else s.invert_step
            assert rel(fn(out, int(t), x, int(n)), GOLDEN[key]) <= 1e-5, key


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_three_step_loops_match_diffusers(pred):
    s = scheduler(pred)
    y = GOLDEN["x"]
    for out, t in zip(GOLDEN["outs"], s.timesteps(50)):
        y = s.step(out, t, y, 50)
    assert rel(y, GOLDEN[f"{pred}_loop"]) <= 1e-5
    y = GOLDEN["x"]
    for out, t in zip(GOLDEN["outs"], reversed(s.timesteps(50))):
        y = s.invert_step(out, t, y, 50)
    assert rel(y, GOLDEN[f"{pred}_invert_loop"]) <= 1e-5


def test_steps_run_on_jittor_vars():
    from common.jittor_env import load_jittor
    jt = load_jittor()
    s = scheduler()
    x, out = GOLDEN["x"], GOLDEN["outs"][0]
    y = s.step(jt.array(out), 961, jt.array(x), 25)
    assert isinstance(y, jt.Var)
    assert rel(y.numpy(), GOLDEN["v_prediction_step_25_961"]) <= 1e-5


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_split_rebuilds_the_latent(pred):
    s, x, out = scheduler(pred), GOLDEN["x"].astype(np.float64), GOLDEN["outs"][0].astype(np.float64)
    for t in (1, 481, 981):
        a = s.alpha(t)
        x0, eps = s.split(out, x, a)
        assert np.abs(np.sqrt(a) * x0 + np.sqrt(1 - a) * eps - x).max() < 1e-10


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_inversion_then_sampling_with_the_same_noise_returns_the_input(pred):
    s, x = scheduler(pred), GOLDEN["x"].astype(np.float64)
    eps = GOLDEN["outs"][1].astype(np.float64)
    for t in (1, 481, 981):
        a_lo, a_hi = s.alpha(t - 20), s.alpha(t)
        # the model output that means noise `eps` at each level
        out_lo = eps if pred == "epsilon" else (eps - np.sqrt(1 - a_lo) * x) / np.sqrt(a_lo)
        up = s.invert_step(out_lo, t, x, 50)
        out_hi = eps if pred == "epsilon" else (eps - np.sqrt(1 - a_hi) * up) / np.sqrt(a_hi)
        assert np.abs(s.split(out_hi, up, a_hi)[1] - eps).max() < 1e-9
        assert np.abs(s.step(out_hi, t, up, 50) - x).max() < 1e-9


def test_unsupported_config_is_refused():
    with pytest.raises(ValueError, match="timestep_spacing"):
        scheduler(timestep_spacing="karras")
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler("sample")
