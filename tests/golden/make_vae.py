"""Regenerate tests/golden/vae.npz with diffusers (reference venv): .venv-ref/bin/python tests/golden/make_vae.py

The tiny AutoencoderKL (common.devkit.tiny_weights.VAE filled by tiny_param): posterior mean/logvar of a seeded
(1,3,64,96) image, decode of a seeded (1,4,8,12) latent, and the reference key/shape list.
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKL  # noqa: E402

from common.devkit.tiny_weights import VAE, tiny_param  # noqa: E402


def main():
    torch.manual_seed(0)
    vae = AutoencoderKL(**{k: v for k, v in VAE.items() if not k.startswith("_")})
    state = vae.state_dict()
    vae.load_state_dict({k: torch.from_numpy(tiny_param(k, v.shape)) for k, v in state.items()})
    vae.eval()
    rng = np.random.default_rng(7)
    image = rng.uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32)
    latent = rng.standard_normal((1, 4, 8, 12)).astype(np.float32)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(image)).latent_dist
        decoded = vae.decode(torch.from_numpy(latent)).sample
    out = {"image": image, "mean": posterior.mean.numpy(), "logvar": posterior.logvar.numpy(),
           "latent": latent, "decoded": decoded.numpy(), "keys": np.array(list(state)),
           "shapes": np.array([",".join(map(str, v.shape)) for v in state.values()])}
    path = ROOT / "tests" / "golden" / "vae.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(state)} tensors, decoded {tuple(decoded.shape)}")


if __name__ == "__main__":
    main()
