"""LoRA: JDiffusion's .bin on the tiny UNet/text encoder equals diffusers' load_lora_weights (golden
lora.npz); every key format gives the same merged weights; swap/remove restore the base bit for bit."""
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from common.jittor_env import load_jittor
from common.sd.clip import CLIPTextModel
from common.sd.lora import LoraError, LoraMerger, LoraSet
from common.sd.unet import UNet2DConditionModel
from common.sd.weights import load_state_dict, read_weights
from common.devkit.tiny_weights import TEXT_ENCODER, UNET, tiny_param

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "lora.npz")


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def tiny(cls, config):
    model = cls(config)
    load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny")
    return model


@pytest.fixture(scope="module")
def models():
    return tiny(UNet2DConditionModel, UNET), tiny(CLIPTextModel, TEXT_ENCODER)


@pytest.fixture(scope="module")
def lora_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "pytorch_lora_weights.bin"
    path.write_bytes(GOLDEN["lora_bin"].tobytes())
    return path


def weights(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def run_unet(unet):
    with jt.no_grad():
        return unet(jt.array(GOLDEN["x"]), int(GOLDEN["t"]), jt.array(GOLDEN["cond"])).numpy()


def run_te(te):
    with jt.no_grad():
        return te(GOLDEN["ids"]).numpy()


def test_jdiffusion_lora_matches_diffusers(models, lora_bin):
    unet, te = models
    merger = LoraMerger(unet, te)
    assert rel(run_unet(unet), GOLDEN["unet_base"]) <= 1e-4
    merger.apply(LoraSet.read(lora_bin, unet, te), 1.0)
    assert rel(run_unet(unet), GOLDEN["unet_lora"]) <= 1e-4
    assert rel(run_te(te), GOLDEN["te_lora"]) <= 1e-4
    merger.apply(LoraSet.read(lora_bin, unet, te), 0.5)
    assert rel(run_unet(unet), GOLDEN["unet_lora_half"]) <= 1e-4
    merger.remove()
    assert rel(run_te(te), GOLDEN["te_base"]) <= 1e-4


def test_remove_and_scale_zero_restore_the_base_exactly(models, lora_bin):
    unet, te = models
    base_unet, base_te = weights(unet), weights(te)
    merger = LoraMerger(unet, te)
    lora = LoraSet.read(lora_bin, unet, te)
    merger.apply(lora, 1.0)
    assert any(not np.array_equal(v, base_unet[k]) for k, v in weights(unet).items())
    merger.apply(lora, 0.7)  # a swap starts from the originals, never from the merged weights
    merger.remove()
    for model, base in ((unet, base_unet), (te, base_te)):
        assert all(np.array_equal(v, base[k]) for k, v in weights(model).items())
    merger.apply(lora, 0.0)
    assert all(np.array_equal(v, base_unet[k]) for k, v in weights(unet).items())
    merger.remove()


def test_swapping_restores_modules_the_new_lora_does_not_touch(models, lora_bin, tmp_path):
    unet, te = models
    base = weights(unet)
    state = read_weights(lora_bin)
    only_q = {k: v for k, v in state.items() if k.startswith("unet.") and ".to_q." in k}
    save_file(only_q, str(tmp_path / "q.safetensors"))
    merger = LoraMerger(unet, te)
    merger.apply(LoraSet.read(lora_bin, unet, te))
    merger.apply(LoraSet.read(tmp_path / "q.safetensors", unet, te))
    after = weights(unet)
    changed = {k for k in base if not np.array_equal(after[k], base[k])}
    assert changed and all(k.endswith("to_q.weight") for k in changed)
    merger.remove()


def convert(state, fmt):
    """The same LoRA in another key format (kohya: α = 2r with up halved gives the same ΔW)."""
    out = {}
    for key, value in state.items():
        model, rest = key.split(".", 1)
        for old, new in ((".lora_linear_layer.", ".lora."),):
            rest = rest.replace(old, new)
        module, half = rest.split(".lora.")
        half = half.split(".")[0]
        if fmt == "peft":
            out[f"{model}.{module}.lora_{'A' if half == 'down' else 'B'}.weight"] = value
        elif fmt == "unprefixed" and model == "unet":
            out[f"{module}.lora.{half}.weight"] = value
        elif fmt == "processor":
            head, name = module.rsplit(".", 1) if not module.endswith("to_out.0") else (module[:-9], "to_out")
            name = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}.get(name, name)
            out[f"{model}.{head}.processor.{name}_lora.{half}.weight"] = value
        elif fmt == "kohya":
            prefix = "lora_unet_" if model == "unet" else "lora_te_"
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_{half}.weight"] = value / 2 if half == "up" else value
            out[f"{name}.alpha"] = np.array(2.0 * value.shape[0 if half == "down" else 1], np.float32)
    return out


@pytest.mark.parametrize("fmt", ["peft", "unprefixed", "processor", "kohya"])
def test_every_key_format_gives_the_same_merged_weights(models, lora_bin, tmp_path, fmt):
    unet, te = models
    state = read_weights(lora_bin)
    if fmt == "unprefixed":
        state = {k: v for k, v in state.items() if k.startswith("unet.")}
    merger = LoraMerger(unet, te)
    merger.apply(LoraSet.read(lora_bin, unet, te) if fmt != "unprefixed" else _unet_only(state, tmp_path, unet, te))
    expected_unet, expected_te = weights(unet), weights(te)
    merger.remove()
    save_file(convert(state, fmt), str(tmp_path / f"{fmt}.safetensors"))
    merger.apply(LoraSet.read(tmp_path / f"{fmt}.safetensors", unet, te))
    for model, expected in ((unet, expected_unet), (te, expected_te)):
        for k, v in weights(model).items():
            np.testing.assert_allclose(v, expected[k], rtol=0, atol=1e-7, err_msg=f"{fmt}: {k}")
    merger.remove()


def _unet_only(state, tmp_path, unet, te):
    save_file(state, str(tmp_path / "unet_only.safetensors"))
    return LoraSet.read(tmp_path / "unet_only.safetensors", unet, te)


def test_bin_and_safetensors_read_the_same(models, lora_bin, tmp_path):
    unet, te = models
    save_file(read_weights(lora_bin), str(tmp_path / "pytorch_lora_weights.safetensors"))
    a = LoraSet.read(lora_bin, unet, te).layers
    b = LoraSet.read(tmp_path / "pytorch_lora_weights.safetensors", unet, te).layers
    assert len(a) == len(b) == len(GOLDEN["lora_keys"]) // 2
    for x, y in zip(sorted(a, key=lambda l: (l.model, l.module)), sorted(b, key=lambda l: (l.model, l.module))):
        assert (x.model, x.module, x.alpha) == (y.model, y.module, y.alpha)
        assert np.array_equal(x.down, y.down) and np.array_equal(x.up, y.up)


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.update({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_z.lora.down.weight":
                         np.zeros((4, 32), np.float32)}), "to_z.*lacks"),
    (lambda s: s.pop("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"),
     "mid_block.*no matching up"),
    (lambda s: s.update({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight":
                         np.zeros((4, 7), np.float32)}), r"do not fit"),
    (lambda s: s.update({"unet.something.weird": np.zeros(1, np.float32)}), "not a LoRA key"),
])
def test_bad_lora_files_fail_naming_file_and_key(models, lora_bin, tmp_path, edit, words):
    unet, te = models
    state = read_weights(lora_bin)
    edit(state)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraError, match="bad.safetensors: .*" + words) as e:
        LoraSet.read(tmp_path / "bad.safetensors", unet, te)
    assert "\n" not in str(e.value)


def test_fp16_models_merge_in_fp32_and_restore_exactly(lora_bin, tmp_path):
    unet = tiny(UNet2DConditionModel, UNET).float16()
    base = weights(unet)
    save_file({k: v for k, v in read_weights(lora_bin).items() if k.startswith("unet.")},
              str(tmp_path / "unet.safetensors"))
    lora = LoraSet.read(tmp_path / "unet.safetensors", unet)
    merger = LoraMerger(unet)
    merger.apply(lora, 1.0)
    merged = weights(unet)
    for layer in lora.layers[:8]:
        key = layer.module + ".weight"
        expected = (base[key].astype(np.float32) + layer.delta(1.0)).astype(np.float16)
        assert merged[key].dtype == np.float16 and np.array_equal(merged[key], expected)
    merger.remove()
    assert all(np.array_equal(v, base[k]) for k, v in weights(unet).items())


def test_text_encoder_keys_need_a_text_encoder(lora_bin):
    unet = tiny(UNet2DConditionModel, UNET)
    with pytest.raises(LoraError, match="targets the text_encoder, which is not loaded"):
        LoraSet.read(lora_bin, unet)
