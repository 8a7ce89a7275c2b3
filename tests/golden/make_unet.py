"""Regenerate tests/golden/unet.npz with diffusers (run: .venv-ref/bin/python tests/golden/make_unet.py).

The tiny SD-2.1-shaped UNet (common.devkit.tiny_weights.UNET) filled by tiny_param, run on non-square latents
with one timestep per batch item, plus a latent not divisible by 8; a resnet and a transformer block are
recorded with their inputs so a failure can be located.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from common.devkit.tiny_weights import UNET, tiny_param  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

RECORDED = ("time_embedding", "down_blocks.1.resnets.0", "up_blocks.3.attentions.2.transformer_blocks.0")


def main():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{k: v for k, v in UNET.items() if not k.startswith("_")}).eval()
    state = unet.state_dict()
    unet.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) for k, v in state.items()})
    rng = np.random.default_rng(7)
    out = {
        "keys": np.array(json.dumps({k: list(v.shape) for k, v in state.items()})),
        "sample": rng.standard_normal((2, 4, 16, 24)).astype(np.float32),
        "timesteps": np.array([961, 1], dtype=np.int64),
        "context": rng.standard_normal((2, 77, 32)).astype(np.float32),
        "odd_sample": rng.standard_normal((1, 4, 10, 14)).astype(np.float32),
        "odd_timestep": np.array(500, dtype=np.int64),
    }
    modules = dict(unet.named_modules())

    def recorder(name):
        def hook(module, args, kwargs, output):
            inputs = [x for x in list(args) + [kwargs.get(k) for k in ("temb", "encoder_hidden_states")]
                      if x is not None]
            for i, x in enumerate(inputs):
                out[f"{name}/in{i}"] = x.detach().numpy()
            out[f"{name}/out"] = (output[0] if isinstance(output, tuple) else output).detach().numpy()
        return hook

    handles = [modules[n].register_forward_hook(recorder(n), with_kwargs=True) for n in RECORDED]
    with torch.no_grad():
        out["output"] = unet(torch.from_numpy(out["sample"]), torch.from_numpy(out["timesteps"]),
                             torch.from_numpy(out["context"])).sample.numpy()
        for h in handles:
            h.remove()
        out["odd_output"] = unet(torch.from_numpy(out["odd_sample"]), 500,
                                 torch.from_numpy(out["context"][:1])).sample.numpy()
    path = ROOT / "tests" / "golden" / "unet.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes):", {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
