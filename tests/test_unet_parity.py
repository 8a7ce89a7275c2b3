"""The Jittor UNet matches diffusers' UNet2DConditionModel (golden from tests/golden/make_unet.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from common.jittor_env import load_jittor
from common.sd.attention import AttnProcessor
from common.sd.weights import load_state_dict
from common.sd.unet import UNet2DConditionModel, timestep_embedding
from common.devkit.tiny_weights import UNET, tiny_param

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "unet.npz")
TOL = 1e-4


def rel_err(y, ref):
    return float(np.abs(np.asarray(y) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def unet():
    model = UNet2DConditionModel(UNET)
    load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny weights")
    return model


def run(unet, sample, timestep, context):
    with jt.no_grad():
        return unet(jt.array(sample), timestep, jt.array(context)).numpy()


def test_state_dict_keys_and_shapes_equal_diffusers(unet):
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == json.loads(str(GOLDEN["keys"]))


def test_timestep_embedding_float32_cos_first():
    t = jt.array(GOLDEN["timesteps"].astype(np.int32))
    emb = timestep_embedding(t, 2, UNET["block_out_channels"][0], True, 0).numpy()
    assert rel_err(emb, GOLDEN["time_embedding/in0"]) <= TOL


def test_time_embedding_resnet_and_transformer_block_match(unet):
    with jt.no_grad():
        temb = unet.time_embedding(jt.array(GOLDEN["time_embedding/in0"])).numpy()
        name = "down_blocks.1.resnets.0"
        res = unet.down_blocks[1].resnets[0](jt.array(GOLDEN[f"{name}/in0"]), jt.array(GOLDEN[f"{name}/in1"]))
        name = "up_blocks.3.attentions.2.transformer_blocks.0"
        block = unet.up_blocks[3].attentions[2].transformer_blocks[0]
        tb = block(jt.array(GOLDEN[f"{name}/in0"]), jt.array(GOLDEN[f"{name}/in1"]))
    assert rel_err(temb, GOLDEN["time_embedding/out"]) <= TOL
    assert rel_err(res.numpy(), GOLDEN["down_blocks.1.resnets.0/out"]) <= TOL
    assert rel_err(tb.numpy(), GOLDEN[f"{name}/out"]) <= TOL


def test_unet_matches_diffusers_with_per_item_timesteps(unet):
    y = run(unet, GOLDEN["sample"], jt.array(GOLDEN["timesteps"].astype(np.int32)), GOLDEN["context"])
    assert rel_err(y, GOLDEN["output"]) <= TOL


def test_unet_matches_diffusers_on_latents_not_divisible_by_8(unet):
    y = run(unet, GOLDEN["odd_sample"], int(GOLDEN["odd_timestep"]), GOLDEN["context"][:1])
    assert y.shape == GOLDEN["odd_output"].shape
    assert rel_err(y, GOLDEN["odd_output"]) <= TOL


def test_custom_processor_is_called_by_name_and_plain_one_restores_output(unet):
    name = "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    calls = []

    class Recording(AttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None):
            calls.append((attn.name, tuple(hidden_states.shape)))
            return super().__call__(attn, hidden_states, encoder_hidden_states)

    args = (GOLDEN["sample"], jt.array(GOLDEN["timesteps"].astype(np.int32)), GOLDEN["context"])
    baseline = run(unet, *args)
    unet.set_processors({name: Recording()})
    try:
        recorded = run(unet, *args)
    finally:
        unet.set_processors({name: AttnProcessor()})
    assert calls == [(name, (2, 16 * 24, 32))]
    np.testing.assert_array_equal(recorded, baseline)
    np.testing.assert_array_equal(run(unet, *args), baseline)


def test_attention_layers_are_named_by_diffusers_path_and_unknown_names_raise(unet):
    layers = unet.attention_layers()
    golden = {k[:-len(".to_q.weight")] for k in json.loads(str(GOLDEN["keys"])) if k.endswith(".to_q.weight")}
    assert set(layers) == golden and len(layers) == 2 * 16  # SD 2.1's 16 transformer blocks, attn1 + attn2
    assert all(attn.name == name for name, attn in layers.items())
    assert "mid_block.attentions.0.transformer_blocks.0.attn2" in layers
    with pytest.raises(KeyError):
        unet.set_processors({"up_blocks.9.attentions.0.transformer_blocks.0.attn1": AttnProcessor()})


def test_unsupported_config_raises_naming_the_key():
    with pytest.raises(ValueError, match="num_attention_heads"):  # diffusers refuses it too
        UNet2DConditionModel({**UNET, "num_attention_heads": [2, 2, 4, 4]})
    with pytest.raises(ValueError, match="layers_per_block"):
        UNet2DConditionModel({**UNET, "layers_per_block": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="class_embed_type"):
        UNet2DConditionModel({**UNET, "class_embed_type": "timestep"})


def test_float16_unet_stays_close_to_diffusers_fp32():
    model = UNet2DConditionModel(UNET)
    load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny weights")
    model.float16()
    with jt.no_grad():
        y = model(jt.array(GOLDEN["sample"]).float16(), GOLDEN["timesteps"], jt.array(GOLDEN["context"]).float16())
    assert y.dtype == "float16"
    assert rel_err(y.float32().numpy(), GOLDEN["output"]) <= 5e-2  # fp16 rounding through ~100 layers
