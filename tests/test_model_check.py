"""Model files, LoRAs and style images are checked at launch (docs/inputs.md): without Jittor, from configs
and headers, in one line naming the file and exit code 2. The parameters the check expects are read off
common/sd/architecture.py's declarations, from which the Jittor modules are built: first shown equal."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import launch
from common.devkit import sd21_configs, tiny_weights
from common.model_check import ModelCheckError, inspect_model
from common.sd.architecture import declared_shapes, text_encoder, unet, vae
from queue_fixtures import REPO, write_config

pytestmark = pytest.mark.timeout(120)


def _module_shapes(cls, config):
    return {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}


@pytest.mark.parametrize("family", ["tiny-sd21", "tiny-sd1", "sd21"])
def test_the_declared_parameters_equal_the_built_modules(family):
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    unet_cfg, vae_cfg, text_cfg = {"tiny-sd21": (tiny_weights.UNET, tiny_weights.VAE, tiny_weights.TEXT_ENCODER),
                       "tiny-sd1": (tiny_weights.UNET_SD1, tiny_weights.VAE, tiny_weights.TEXT_ENCODER_SD1),
                       "sd21": (sd21_configs.UNET, sd21_configs.VAE, sd21_configs.TEXT_ENCODER)}[family]
    # lazy Vars: nothing is computed
    assert declared_shapes(unet(unet_cfg)) == _module_shapes(UNet2DConditionModel, unet_cfg)
    assert declared_shapes(vae(vae_cfg)) == _module_shapes(AutoencoderKL, vae_cfg)
    assert declared_shapes(text_encoder(text_cfg)) == _module_shapes(CLIPTextModel, text_cfg)


BAD_CONFIGS = [
    ("unet", {"act_fn": "gelu"}), ("unet", {"class_embed_type": "timestep"}),
    ("unet", {"up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D"]}),
    ("unet", {"transformer_layers_per_block": 2}), ("unet", {"layers_per_block": [2, 2, 2, 2]}),
    ("unet", {"attention_head_dim": 3}),
    ("vae", {"act_fn": "relu"}), ("vae", {"latents_mean": [0.0] * 4}), ("vae", {"up_block_types": ["X"] * 4}),
    ("text_encoder", {"hidden_act": "relu"}), ("text_encoder", {"num_attention_heads": 5}),
]


@pytest.mark.parametrize("component, change", BAD_CONFIGS)
def test_a_config_we_cannot_build_is_refused_by_the_modules_and_the_check(tmp_path, tiny_model_files, component,
                                                                          change):
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    cls, base = {"unet": (UNet2DConditionModel, tiny_weights.UNET), "vae": (AutoencoderKL, tiny_weights.VAE),
                 "text_encoder": (CLIPTextModel, tiny_weights.TEXT_ENCODER)}[component]
    with pytest.raises(ValueError):
        cls({**base, **change})
    model = _copy(tiny_model_files, tmp_path)
    _edit_json(model / component / "config.json", **change)
    with pytest.raises(ModelCheckError, match=f"{component}/config.json: {component} config"):
        inspect_model(model)


def test_the_tiny_model_the_devkit_writes_with_jittor_passes(tiny_model_dir):
    shapes = inspect_model(tiny_model_dir)
    assert set(shapes) == {"unet", "vae", "text_encoder"} and "conv_in.weight" in shapes["unet"]


# -- the launcher refuses each broken file in one line, exit 2 ---------------------------------------------
def _copy(model, tmp_path):
    """A copy of the tiny model whose files are hard links: replace a file (never edit it in place)."""
    copy = tmp_path / "model"
    shutil.copytree(model, copy, copy_function=os.link)
    return copy


def _replace(path, data: bytes):
    path.unlink()
    path.write_bytes(data)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    _replace(path, json.dumps(data).encode())


UNET_FILE, VAE_FILE = "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"
TEXT_FILE = "text_encoder/model.safetensors"
BREAKAGES = {
    "missing unet weights": (lambda m: (m / UNET_FILE).unlink(), "unet: no diffusion_pytorch_model.safetensors"),
    "truncated unet": (lambda m: _replace(m / UNET_FILE, (m / UNET_FILE).read_bytes()[:5000]), UNET_FILE),
    "random vae": (lambda m: _replace(m / VAE_FILE, os.urandom(4096)), VAE_FILE),
    "header beyond the file": (lambda m: _replace(m / TEXT_FILE, (10**9).to_bytes(8, "little") + b"{}"), TEXT_FILE),
    "broken unet config": (lambda m: _replace(m / "unet/config.json", b'{"_class_name": "UNet2D'), "unet/config.json"),
    "unet config not an object": (lambda m: _replace(m / "unet/config.json", b"[]"), "not a unet config"),
    "unsupported unet config": (lambda m: _edit_json(m / "unet/config.json", act_fn="gelu"), "act_fn='gelu'"),
    "config and weights disagree": (lambda m: _edit_json(m / "unet/config.json", layers_per_block=1),
                                    "unexpected keys for the unet"),
    "vae weights as text encoder": (lambda m: _replace(m / TEXT_FILE, (m / VAE_FILE).read_bytes()),
                                    "missing keys for the text_encoder"),
    "wrong width": (lambda m: _edit_json(m / "text_encoder/config.json", intermediate_size=64), "shape mismatches"),
    "no tokenizer": (lambda m: (m / "tokenizer" / "vocab.json").unlink(), "tokenizer"),
    "broken scheduler config": (lambda m: _replace(m / "scheduler/scheduler_config.json", b"{"),
                                "scheduler_config.json"),
    "scheduler config not an object": (lambda m: _replace(m / "scheduler/scheduler_config.json", b"7"),
                                       "not a JSON object"),
}


def _launch_fails(capsys, config_path, *needles):
    code = launch.main(["--config", str(config_path), "--gpus", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _real_checks(tmp_path, model, **sections):
    """A config whose stages are the real ones (so are their launch checks); nothing gets to run them."""
    return write_config(tmp_path, stages={"graph": "common.graph:default_graph"}, model={"path": str(model)},
                        lora={"missing": "error", "dir": str(model / "loras")}, **sections)


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_model_file_is_refused_at_launch(tmp_path, capsys, tiny_model_files, breakage):
    model = _copy(tiny_model_files, tmp_path)
    breaks, needle = BREAKAGES[breakage]
    breaks(model)
    _launch_fails(capsys, _real_checks(tmp_path, model), "model.path", needle)
    assert not (tmp_path / "q").exists()


def test_the_model_check_needs_no_jittor(tiny_model_files):
    import subprocess
    import sys
    code = ("import sys; from common.model_check import inspect_model, check_lora_file; "
            f"m = inspect_model({str(tiny_model_files)!r}); "
            f"check_lora_file({str(tiny_model_files / 'loras/style_00/pytorch_lora_weights.safetensors')!r}, m); "
            "print('jittor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


def test_a_fixed_model_file_is_checked_again(tmp_path, tiny_model_files):
    model = _copy(tiny_model_files, tmp_path)
    inspect_model(model)
    _replace(model / VAE_FILE, b"junk")
    with pytest.raises(ModelCheckError, match="vae"):
        inspect_model(model)


def test_a_consumer_layer_the_unet_lacks_is_refused_at_launch(tmp_path, capsys, tiny_model_files):
    path = _real_checks(tmp_path, tiny_model_files, consumer={"layers": ["up_blocks.0.attentions.0"]})
    _launch_fails(capsys, path, "consumer.layers", "up_blocks.0.attentions.0", "up_blocks.1.attentions.0")


# -- style images and LoRAs (C9) ---------------------------------------------------------------------------
def _lora(model, style="00"):
    return model / "loras" / f"style_{style}" / "pytorch_lora_weights.safetensors"


def _safetensors(state: dict) -> bytes:
    from safetensors.numpy import save
    return save(state)


def _renamed_lora(model, old, new):
    from safetensors.numpy import load_file
    state = load_file(str(_lora(model)))
    return _safetensors({k.replace(old, new): v for k, v in state.items()})


LORA_BREAKAGES = {
    "random": (lambda m: os.urandom(2048), "pytorch_lora_weights.safetensors"),
    "truncated": (lambda m: _lora(m).read_bytes()[:300], "pytorch_lora_weights.safetensors"),
    "not lora keys": (lambda m: _renamed_lora(m, ".lora.down.weight", ".weight"), "not a LoRA key"),
    "module the model lacks": (lambda m: _renamed_lora(m, "attn1", "attn9"), "which this model lacks"),
}


@pytest.mark.parametrize("breakage", sorted(LORA_BREAKAGES))
def test_a_broken_lora_is_refused_at_launch(tmp_path, capsys, tiny_model_files, breakage):
    model = _copy(tiny_model_files, tmp_path)
    make, needle = LORA_BREAKAGES[breakage]
    _replace(_lora(model), make(model))
    _launch_fails(capsys, _real_checks(tmp_path, model), "style_00", needle)


@pytest.mark.parametrize("breakage, needle", [
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "damaged or truncated"),
    (lambda p: p.write_text("not an image"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty file"),
], ids=["truncated", "text", "empty"])
def test_a_broken_style_image_is_refused_at_launch(tmp_path, capsys, tiny_model_files, breakage, needle):
    path = _real_checks(tmp_path, tiny_model_files)
    image = tmp_path / "data" / "01" / "images" / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    breakage(image)
    _launch_fails(capsys, path, str(image), needle)


@pytest.mark.parametrize("caption, needle", [
    ("caf\xe9".encode("latin-1"), "ref.txt: the caption is not UTF-8"),
    (" ".join(["fox"] * 80).encode(), "ref.png: its training prompt"),
], ids=["not-utf8", "too-long"])
def test_a_bad_caption_is_refused_at_launch(tmp_path, capsys, tiny_model_files, caption, needle):
    path = write_config(tmp_path, stages={"graph": "common.graph:default_graph"}, model={"path": str(tiny_model_files)},
                        lora={"missing": "train", "dir": str(tmp_path / "loras")},
                        train={"prompt": "{caption} in style_{style}"})
    (tmp_path / "data" / "01" / "images" / "ref.txt").write_bytes(caption)
    _launch_fails(capsys, path, str(tmp_path / "data" / "01" / "images"), needle)
    assert not (tmp_path / "q").exists()
