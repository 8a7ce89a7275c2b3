"""common.devkit.tiny_model writes a complete, deterministic diffusers-layout SD 2.1-shaped checkpoint and LoRAs.

Reference key/shape lists come from diffusers/transformers/peft (tests/golden/tiny_model.npz,
make_tiny_model.py, which also checks that diffusers loads the written folder and its LoRA).
"""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from common.sd.clip import CLIPTokenizer
from common.sd.weights import read_weights
from common.devkit.tiny_model import FILES, write_tiny_model
from common.devkit.tiny_weights import tiny_param

GOLDEN = np.load(Path(__file__).parent / "golden" / "tiny_model.npz")
WEIGHTS = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
           "text_encoder": "text_encoder/model.safetensors"}


def reference(prefix):
    return {k: tuple(int(d) for d in s.split(",")) for k, s in zip(GOLDEN[f"{prefix}_keys"].tolist(),
                                                                 GOLDEN[f"{prefix}_shapes"].tolist())}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("w") / "tiny", lora_styles=["00", "style_01"])


def test_all_files_present_and_configs_parse(model):
    for name in FILES:
        assert (model / name).is_file(), name
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert json.loads((model / "scheduler/scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    for name in ("unet", "vae", "text_encoder"):
        assert isinstance(json.loads((model / name / "config.json").read_text()), dict)


@pytest.mark.parametrize("component", sorted(WEIGHTS))
def test_weights_have_reference_keys_shapes_and_tiny_values(model, component):
    state = load_file(str(model / WEIGHTS[component]))
    assert {k: v.shape for k, v in state.items()} == reference(component)
    for key, value in state.items():
        assert value.dtype == np.float32 and np.array_equal(value, tiny_param(key, value.shape)), key


def test_tokenizer_pads_with_exclamation_id_zero(model):
    ids = CLIPTokenizer.from_folder(model / "tokenizer")(["a cat"])
    assert ids[0, :5].tolist() == [49406, 320, 2368, 49407, 0]


def test_lora_has_diffusers_keys_nonzero_up_and_per_style_values(model):
    a = load_file(str(model / "loras/style_00/pytorch_lora_weights.safetensors"))
    b = load_file(str(model / "loras/style_01/pytorch_lora_weights.safetensors"))
    assert {k: v.shape for k, v in a.items()} == reference("lora")
    assert all(np.abs(v).max() > 0 for k, v in a.items() if ".lora.up." in k)
    assert not any(np.array_equal(a[k], b[k]) for k in a)


def test_two_writes_are_byte_identical(model, tmp_path):
    other = write_tiny_model(tmp_path / "again", lora_styles=["00", "01"])
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        assert path.read_bytes() == (other / path.relative_to(model)).read_bytes(), path


def test_rewrite_of_complete_folder_changes_nothing(model):
    stamps = {p: p.stat().st_mtime_ns for p in model.rglob("*")}
    write_tiny_model(model, lora_styles=["00"])
    assert {p: p.stat().st_mtime_ns for p in model.rglob("*")} == stamps


def test_bin_lora_holds_the_same_tensors(model, tmp_path):
    out = write_tiny_model(tmp_path / "bin", lora_styles=["00"], lora_format="bin")
    ours = read_weights(out / "loras/style_00/pytorch_lora_weights.bin")
    ref = load_file(str(model / "loras/style_00/pytorch_lora_weights.safetensors"))
    assert ours.keys() == ref.keys() and all(np.array_equal(ours[k], ref[k]) for k in ref)


def test_unfinished_folder_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(FileExistsError, match="not a finished tiny model"):
        write_tiny_model(tmp_path / "half")


def test_sd1_family_has_diffusers_keys_and_its_own_configs(tmp_path):
    sd1 = np.load(Path(__file__).parent / "golden" / "sd1.npz")
    out = write_tiny_model(tmp_path / "sd1", lora_styles=["00"], family="sd1")
    unet = load_file(str(out / WEIGHTS["unet"]))
    assert {k: list(v.shape) for k, v in unet.items()} == json.loads(str(sd1["unet_keys"]))
    text = load_file(str(out / WEIGHTS["text_encoder"]))
    assert {k: list(v.shape) for k, v in text.items()} == json.loads(str(sd1["text_keys"]))
    assert all(np.array_equal(v, tiny_param(k, v.shape)) for k, v in unet.items())
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert "use_linear_projection" not in json.loads((out / "unet/config.json").read_text())
    assert json.loads((out / "text_encoder/config.json").read_text())["hidden_act"] == "quick_gelu"
    assert CLIPTokenizer.from_folder(out / "tokenizer")(["a cat"])[0, -1] == 49407
    lora = load_file(str(out / "loras/style_00/pytorch_lora_weights.safetensors"))
    assert {k: v.shape for k, v in lora.items()} == reference("lora")  # same attention layers as SD 2.1
    with pytest.raises(FileExistsError, match="another family"):
        write_tiny_model(out)
