"""Single-file SD checkpoints (original LDM layout) against diffusers' `from_single_file`.

tests/golden/make_single_file.py writes the tiny folders as single files with common/devkit/single_file.py,
proves diffusers 0.27.2 loads each (.safetensors and Lightning .ckpt, SD 2.x OpenCLIP and SD 1.x CLIP, with
and without EMA) to the folder's very tensors, and records the modules' outputs. Here the same files load
through StableDiffusion.load: every tensor equals the folder's (so outputs equal ours from the folder), the
outputs equal diffusers' within the parity tolerance, and crafted files fail the launch check in one line.
"""
import importlib.util
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.devkit.single_file import EMA_SEED, ldm_state, write_single_file
from common.devkit.tiny_model import write_tiny_model
from common.devkit.tiny_weights import tiny_param
from common.model_check import ModelCheckError, inspect_model
from common.sd.model_source import ModelOptions

GOLDEN = np.load(Path(__file__).parent / "golden" / "single_file.npz")
TOL = 1e-4


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    return {"sd21": tiny_model_dir, "sd1": write_tiny_model(tmp_path_factory.mktemp("sf") / "tiny-sd1", family="sd1")}


@pytest.fixture(scope="module")
def files(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {(family, suffix, ema): write_single_file(folder, out / f"{family}{'-ema' if ema else ''}.{suffix}", ema=ema)
            for family, folder in folders.items() for suffix in ("safetensors", "ckpt") for ema in (False, True)}


def _load(path, folder, ema=False):
    from common.sd.pipeline import StableDiffusion
    return StableDiffusion.load(path, "float32", "cpu", ModelOptions(ema=ema, config=str(folder)))


@pytest.mark.parametrize("family,suffix,ema", [(f, s, e) for f in ("sd21", "sd1") for s in ("safetensors", "ckpt")
                                                for e in (False, True)])
def test_every_tensor_equals_the_folders(files, folders, family, suffix, ema):
    """The file's tensors land in our modules as the folder's do (EMA: the model_ema.* copy), so our outputs
    from the file equal ours from the folder."""
    sd = _load(files[family, suffix, ema], folders[family], ema)
    for name in ("unet", "vae", "text_encoder"):
        for key, var in getattr(sd, name).state_dict().items():
            seed = (EMA_SEED,) if ema and name == "unet" else ()
            assert np.array_equal(var.numpy(), tiny_param(key, var.shape, *seed)), f"{name}.{key}"
    assert sd.scheduler.prediction_type == ("v_prediction" if family == "sd21" else "epsilon")
    assert sd.tokenizer.pad_token_id == (0 if family == "sd21" else 49407)


@pytest.mark.parametrize("variant", ["sd21", "sd21-ema", "sd1"])
def test_outputs_equal_diffusers_from_single_file(files, folders, variant):
    from common.jittor_env import load_jittor
    jt = load_jittor()
    family, ema = variant.split("-")[0], variant.endswith("-ema")
    sd = _load(files[family, "safetensors", ema], folders[family], ema)
    g = {k.split("/", 1)[1]: GOLDEN[k] for k in GOLDEN.files if k.startswith(variant + "/")}
    assert str(g["prediction"]) == sd.scheduler.prediction_type
    assert np.array_equal(sd.tokenizer(["a cat", "a painting of a dog, in style_07"]), g["text_ids"])
    with jt.no_grad():
        unet = sd.unet(jt.array(g["unet_sample"]), jt.array(np.array([961, 1])), jt.array(g["unet_context"])).numpy()
        decoded = sd.vae.decode(jt.array(g["vae_latents"])).numpy()
        hidden = sd.text_encoder(jt.array(g["text_ids"])).numpy()
    errors = {"unet": rel_err(unet, g["unet_output"]), "vae": rel_err(decoded, g["vae_decoded"]),
              "text": rel_err(hidden, g["text_hidden"])}
    print(variant, "rel max|diff| vs diffusers from_single_file:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOL, errors


def _model(path, **options):
    return SimpleNamespace(path=str(path), **{**ModelOptions()._asdict(), **options})


def test_launch_check_reads_the_header_and_notes_missing_ema(files, folders, capsys):
    shapes = inspect_model(_model(files["sd21", "ckpt", False], config=str(folders["sd21"]), ema=True))
    assert "up_blocks.3.attentions.2.proj_out.weight" in shapes["unet"]
    assert "holds no model_ema.* weights" in capsys.readouterr().err


def _save(state, path):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def test_crafted_single_files_fail_the_launch_check_in_one_line(folders, tmp_path):
    state = ldm_state(folders["sd21"])
    config = str(folders["sd21"])
    wrong = dict(state, **{"model.diffusion_model.out.2.weight": np.zeros((4, 32, 3, 1), np.float32)})
    missing = {k: v for k, v in state.items() if k != "first_stage_model.decoder.up.0.block.1.conv1.bias"}
    no_text = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
    ckpt = write_single_file(folders["sd21"], tmp_path / "good.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(truncated, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():  # one storage loses its last bytes: its tensor would reach outside it
            data = src.read(info)
            dst.writestr(info.filename, data[:-8] if info.filename.endswith("/data/7") else data)
    cases = {"shape mismatches": _save(wrong, tmp_path / "wrong.safetensors"),
             "decoder.up_blocks.3.resnets.1.conv1.bias": _save(missing, tmp_path / "missing.safetensors"),
             "not a Stable Diffusion": _save(no_text, tmp_path / "no_text.safetensors"),
             "bytes in the pickle but the zip holds": truncated}
    for needle, path in cases.items():
        with pytest.raises(ModelCheckError) as e:
            inspect_model(_model(path, config=config))
        message = str(e.value)
        assert needle in message and "\n" not in message and str(path) in message, message


def test_a_single_file_without_a_tokenizer_names_the_key(files, tmp_path):
    """No model.config or model.tokenizer, and no open_clip installed: one line naming model.tokenizer."""
    if importlib.util.find_spec("open_clip"):
        pytest.skip("open_clip is installed here, so its BPE file fills in the tokenizer (the case this test "
                    "needs is a machine without it, as CI's)")
    with pytest.raises(ModelCheckError, match="set model.tokenizer"):
        inspect_model(_model(files["sd21", "safetensors", False]))


def test_model_config_needs_only_the_folders_configs(files, folders, tmp_path):
    """model.config reads config.json files, scheduler and tokenizer: a folder without weights will do."""
    import shutil
    configs = shutil.copytree(folders["sd21"], tmp_path / "configs", ignore=shutil.ignore_patterns("*.safetensors", "loras"))
    path = files["sd21", "safetensors", False]
    assert inspect_model(_model(path, config=str(configs))) == inspect_model(_model(path, config=str(folders["sd21"])))
