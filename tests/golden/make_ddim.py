"""Regenerate tests/golden/ddim.npz with diffusers (reference venv): `.venv-ref/bin/python tests/golden/make_ddim.py`.

DDIMScheduler / DDIMInverseScheduler with SD 2.1's config (tiny_weights.SCHEDULER), for both prediction
types: timesteps, ᾱ, one step, and 3-step loops where the "model output" of step k is a fixed array.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common.devkit.tiny_weights import SCHEDULER  # noqa: E402

rng = np.random.default_rng(7)
x = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
outs = rng.standard_normal((3, 2, 4, 6, 8)).astype(np.float32)
golden = {"x": x, "outs": outs}

for spacing in ("leading", "trailing", "linspace"):
    s = DDIMScheduler.from_config({**SCHEDULER, "timestep_spacing": spacing})
    for n in (5, 25, 50):
        s.set_timesteps(n)
        golden[f"timesteps_{spacing}_{n}"] = s.timesteps.numpy()
golden["alphas_cumprod"] = DDIMScheduler.from_config(SCHEDULER).alphas_cumprod.numpy()

for pred in ("v_prediction", "epsilon"):
    config = {**SCHEDULER, "prediction_type": pred}
    fwd, inv = DDIMScheduler.from_config(config), DDIMInverseScheduler.from_config(config)
    for n in (25, 50):
        fwd.set_timesteps(n)
        inv.set_timesteps(n)
        ts = fwd.timesteps.tolist()
        for t in (ts[0], ts[len(ts) // 2], ts[-1]):
            golden[f"{pred}_step_{n}_{t}"] = fwd.step(torch.from_numpy(outs[0]), t, torch.from_numpy(x), eta=0.0).prev_sample.numpy()
            golden[f"{pred}_invert_{n}_{t}"] = inv.step(torch.from_numpy(outs[0]), t, torch.from_numpy(x)).prev_sample.numpy()
    fwd.set_timesteps(50)
    inv.set_timesteps(50)
    y = torch.from_numpy(x)
    for k, t in enumerate(fwd.timesteps[:3].tolist()):
        y = fwd.step(torch.from_numpy(outs[k]), t, y, eta=0.0).prev_sample
    golden[f"{pred}_loop"] = y.numpy()
    y = torch.from_numpy(x)
    for k, t in enumerate(inv.timesteps[:3].tolist()):
        y = inv.step(torch.from_numpy(outs[k]), t, y).prev_sample
    golden[f"{pred}_invert_loop"] = y.numpy()
    golden["invert_timesteps_50"] = inv.timesteps.numpy()

np.savez_compressed(Path(__file__).with_name("ddim.npz"), **golden)
print(f"wrote {len(golden)} arrays")
