"""SD 1.x (the original StyleID setting) matches diffusers/transformers on the tiny SD 1.x family
(tests/golden/sd1.npz, make_sd1.py): the UNet with 1x1-conv projections and one head count for every level,
the quick_gelu text encoder, and a folder written by `write_tiny_model(..., family="sd1")` loaded by
StableDiffusion.load and sampled with guided DDIM (epsilon prediction) against diffusers' pipeline."""
import json
from pathlib import Path

import numpy as np
import pytest

from common.devkit.tiny_model import write_tiny_model
from common.devkit.tiny_weights import TEXT_ENCODER_SD1, UNET, UNET_SD1, tiny_param
from common.jittor_env import load_jittor
from common.sd.clip import CLIPTextModel
from common.sd.pipeline import StableDiffusion
from common.sd.unet import UNet2DConditionModel
from common.sd.weights import load_state_dict
from guided_ddim import guided_ddim, rel_err

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "sd1.npz")
TOL = 1e-4
STYLEID_LAYERS = [f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1" for i in (2, 3) for j in range(3)]


def tiny(model):
    load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny weights")
    return model.eval()


@pytest.fixture(scope="module")
def unet():
    return tiny(UNet2DConditionModel(UNET_SD1))


def test_unet_keys_and_shapes_equal_diffusers_with_1x1_conv_projections(unet):
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == json.loads(str(GOLDEN["unet_keys"]))
    assert ours["up_blocks.2.attentions.1.proj_in.weight"] == [32, 32, 1, 1]
    assert set(STYLEID_LAYERS) <= set(unet.attention_layers())


def test_attention_head_dim_counts_heads_at_every_level(unet):
    # SD 1.x's int means that many heads everywhere (diffusers' naming quirk), whatever the width.
    heads = {name: (attn.heads, attn.to_q.weight.shape[0] // attn.heads)
             for name, attn in unet.attention_layers().items()}
    assert heads["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == (4, 8)
    assert heads["mid_block.attentions.0.transformer_blocks.0.attn2"] == (4, 16)
    assert {h for h, _ in heads.values()} == {UNET_SD1["attention_head_dim"]}


def test_transformer_with_conv_projections_matches_diffusers(unet):
    name = "up_blocks.2.attentions.1"
    with jt.no_grad():
        out = unet.up_blocks[2].attentions[1](jt.array(GOLDEN[f"{name}/in0"]), jt.array(GOLDEN[f"{name}/in1"]))
    assert rel_err(out.numpy(), GOLDEN[f"{name}/out"]) <= TOL


def test_unet_matches_diffusers(unet):
    with jt.no_grad():
        y = unet(jt.array(GOLDEN["unet_sample"]), jt.array(GOLDEN["unet_timesteps"].astype(np.int32)),
                 jt.array(GOLDEN["unet_context"])).numpy()
    err = rel_err(y, GOLDEN["unet_output"])
    print(f"SD 1.x UNet rel max|diff| = {err:.2e}")
    assert err <= TOL


def test_omitted_keys_take_diffusers_defaults():
    # SD 1.x configs carry neither key: diffusers then builds conv projections and no attention upcast.
    model = UNet2DConditionModel(UNET_SD1)
    assert not model.config["use_linear_projection"] and not model.config["upcast_attention"]
    assert not model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.upcast
    assert UNet2DConditionModel(UNET).down_blocks[0].attentions[0].proj_in.weight.ndim == 2


def test_quick_gelu_text_encoder_matches_transformers():
    model = CLIPTextModel(TEXT_ENCODER_SD1)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == json.loads(str(GOLDEN["text_keys"]))
    with jt.no_grad():
        hidden = tiny(model)(GOLDEN["text_ids"]).numpy()
    err = rel_err(hidden, GOLDEN["text_hidden"])
    print(f"SD 1.x text encoder (quick_gelu) rel max|diff| = {err:.2e}")
    assert err <= TOL


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("sd1") / "tiny-sd1", family="sd1")
    return StableDiffusion.load(folder, device="cpu")


def test_load_reads_the_sd1_folder(sd1):
    assert sd1.scheduler.prediction_type == "epsilon" and sd1.scheduler.steps_offset == 1
    assert sd1.scheduler.final_alpha_cumprod == pytest.approx(float(sd1.scheduler.alphas_cumprod[0]))
    assert sd1.tokenizer(["a cat"])[0, 3:].tolist() == [49407] * 74  # SD 1.x pads with <|endoftext|>
    assert not sd1.unet.config["use_linear_projection"]


def test_load_and_guided_ddim_match_diffusers_pipeline(sd1):
    ours = guided_ddim(sd1, GOLDEN)
    assert ours["timesteps"].tolist() == GOLDEN["pipe_timesteps"].tolist()
    errs = {"prompt embeds": rel_err(ours["embeds"], GOLDEN["pipe_embeds"]),
            "final latents": rel_err(ours["step_latents"][-1], GOLDEN["pipe_step_latents"][-1])}
    errs.update({f"latents after step {i}": rel_err(a, b)
                 for i, (a, b) in enumerate(zip(ours["step_latents"], GOLDEN["pipe_step_latents"]))})
    print("SD 1.x StableDiffusion.load path rel max|diff|:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert max(errs.values()) <= TOL
    assert np.abs(ours["image"].astype(int) - GOLDEN["pipe_image"]).max() <= 1  # uint8 rounding only
