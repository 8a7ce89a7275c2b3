"""The Jittor CLIPTextModel equals transformers' on the tiny model (tests/golden/clip.npz, make_clip.py)."""
from pathlib import Path

import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.clip import CLIPTextModel
from common.devkit.tiny_weights import TEXT_ENCODER, tiny_param

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "clip.npz")


def tiny_text_encoder():
    model = CLIPTextModel(TEXT_ENCODER)
    model.load_state_dict({k: jt.array(tiny_param(k, v.shape)) for k, v in model.state_dict().items()})
    return model


def test_state_dict_keys_and_shapes_equal_transformers():
    ours = {k: ",".join(map(str, v.shape)) for k, v in CLIPTextModel(TEXT_ENCODER).state_dict().items()}
    assert ours == dict(zip(GOLDEN["keys"].tolist(), GOLDEN["shapes"].tolist()))


def test_last_hidden_state_matches_transformers():
    with jt.no_grad():
        hidden = tiny_text_encoder()(GOLDEN["encode_ids"]).numpy()
    ref = GOLDEN["hidden"]
    err = np.abs(hidden - ref).max() / np.abs(ref).max()
    print(f"clip last_hidden_state rel max|diff| = {err:.2e}")
    assert hidden.shape == ref.shape and err <= 1e-4


def test_unsupported_activation_names_the_key():
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextModel({**TEXT_ENCODER, "hidden_act": "relu"})
