"""The Jittor AutoencoderKL equals diffusers' on the tiny VAE (tests/golden/vae.npz, make_vae.py)."""
from pathlib import Path

import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.weights import load_state_dict
from common.sd.vae import AutoencoderKL, rename_legacy_keys
from common.devkit.tiny_weights import VAE, tiny_param

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "vae.npz")


@pytest.fixture(scope="module")
def vae():
    model = AutoencoderKL(VAE)
    load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny weights")
    return model


def rel_err(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def test_state_dict_keys_and_shapes_equal_diffusers():
    ours = {k: ",".join(map(str, v.shape)) for k, v in AutoencoderKL(VAE).state_dict().items()}
    assert ours == dict(zip(GOLDEN["keys"].tolist(), GOLDEN["shapes"].tolist()))


def test_encode_moments_match_diffusers(vae):
    with jt.no_grad():
        mean, logvar = vae.encode(jt.array(GOLDEN["image"]))
    errs = rel_err(mean.numpy(), GOLDEN["mean"]), rel_err(logvar.numpy(), GOLDEN["logvar"])
    print(f"vae encode rel max|diff|: mean {errs[0]:.2e}, logvar {errs[1]:.2e}")
    assert mean.shape == GOLDEN["mean"].shape and max(errs) <= 1e-4


def test_decode_matches_diffusers(vae):
    with jt.no_grad():
        image = vae.decode(jt.array(GOLDEN["latent"])).numpy()
    err = rel_err(image, GOLDEN["decoded"])
    print(f"vae decode rel max|diff|: {err:.2e}")
    assert image.shape == GOLDEN["decoded"].shape and err <= 1e-4


def test_scaling_factor_comes_from_config():
    assert AutoencoderKL({**VAE, "scaling_factor": 0.13025}).scaling_factor == 0.13025


def test_legacy_attention_names_are_renamed():
    state = {k: np.zeros(v.shape, np.float32) for k, v in AutoencoderKL(VAE).state_dict().items()}
    legacy = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[key] = value[:, :, None, None] if key.endswith(("query.weight", "proj_attn.weight")) else value
    assert legacy.keys() != state.keys()
    renamed = rename_legacy_keys(legacy)
    assert {k: v.shape for k, v in renamed.items()} == {k: v.shape for k, v in state.items()}


def test_unsupported_block_type_names_the_key():
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKL({**VAE, "down_block_types": ["AttnDownEncoderBlock2D"] * 4})
