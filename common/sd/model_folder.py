"""Find a diffusers model folder on disk, offline: a local path, or a repo id in the Hugging Face or
ModelScope cache.

The hub cache keeps `models--org--name/refs/main` (a commit hash) and `snapshots/<commit>/` (the tree,
symlinks into `blobs/`). ModelScope keeps the tree itself at `<cache>/models/org/name` (older releases
`<cache>/org/name`, and `.` in a name as `___`), with its own files (configuration.json, .msc, .mdl)
beside the diffusers ones, which we ignore. We never download: a missing model is an error saying where
we looked.
"""
import json
import os
from pathlib import Path


def _weight_names(stem: str, bin_stem: str) -> tuple:
    """Weight file names in order of preference: safetensors, its fp16 variant, then the torch pickles
    (transformers names its pickle `pytorch_model.bin`, not `model.bin`)."""
    return (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{bin_stem}.bin", f"{bin_stem}.fp16.bin")


# The components we build, the classes we can build them as, and their weight files.
COMPONENTS = {
    "unet": ({"UNet2DConditionModel"}, _weight_names("diffusion_pytorch_model", "diffusion_pytorch_model")),
    "vae": ({"AutoencoderKL"}, _weight_names("diffusion_pytorch_model", "diffusion_pytorch_model")),
    "text_encoder": ({"CLIPTextModel"}, _weight_names("model", "pytorch_model")),
}
_DOWNLOAD_HINT = ("download it first, e.g. `huggingface-cli download {repo}`, or pass the local folder "
                  "that holds {holds}")
MODEL_INDEX = "model_index.json"  # what marks a diffusers model folder


class ModelFolderError(FileNotFoundError):
    """A model folder, file or config we cannot use (message names the path and the fix)."""


def hub_cache_roots() -> list:
    """Where Hugging Face caches live: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub;
    then the old diffusers cache."""
    if os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        hub = Path(os.environ["HF_HOME"]) / "hub"
    else:
        hub = Path.home() / ".cache" / "huggingface" / "hub"
    old = Path(os.environ["HF_HOME"]) / "diffusers" if os.environ.get("HF_HOME") else \
        Path.home() / ".cache" / "huggingface" / "diffusers"
    return [hub.expanduser(), old.expanduser()]


def modelscope_cache_root() -> Path:
    """Where ModelScope caches live: $MODELSCOPE_CACHE, else ~/.cache/modelscope/hub."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub").expanduser()


def _snapshot(repo_dir: Path) -> Path:
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if not snapshot.is_dir():
            raise ModelFolderError(f"{ref} names snapshot {snapshot.name}, which is missing in {repo_dir}; "
                                   "download the model again")
        return snapshot
    snapshots = sorted(p for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    if len(snapshots) != 1:
        raise ModelFolderError(f"{repo_dir}: no refs/main and {len(snapshots)} snapshots, so the revision is "
                               "ambiguous; pass the snapshot folder itself as the model path")
    return snapshots[0]


def resolve_model_folder(path_or_repo_id, holds: str = MODEL_INDEX) -> Path:
    """The model's folder: `path_or_repo_id` itself if it is a directory, else the snapshot of repo id
    `org/name` in a Hugging Face cache. `holds` names the file that marks the folder, for messages."""
    given = Path(str(path_or_repo_id)).expanduser()
    if given.is_dir():
        return given
    repo = str(path_or_repo_id)
    if given.is_file():
        singles = ", or a single-file checkpoint (.safetensors, .ckpt, .pt, .pth)" if holds == MODEL_INDEX else ""
        raise ModelFolderError(f"{given}: is a file; pass the folder that holds {holds}{singles}")
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise ModelFolderError(f"{repo}: no such model folder (and not an org/name repo id); "
                               f"pass the folder that holds {holds}")
    roots = hub_cache_roots()
    for root in roots:
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        if repo_dir.is_dir():
            return _snapshot(repo_dir)
    modelscope = modelscope_cache_root()
    for folder in (modelscope / "models" / repo, modelscope / repo):
        for name in (folder, folder.with_name(folder.name.replace(".", "___"))):
            if (name / holds).is_file():
                return name
    roots.append(modelscope)
    raise ModelFolderError(f"{repo}: not a folder and not in the Hugging Face or ModelScope cache "
                           f"({', '.join(map(str, roots))}); " + _DOWNLOAD_HINT.format(repo=repo, holds=holds))


def component_files(folder, component: str):
    """(config dict, weight file) of one component: prefer `.safetensors`, then the `.fp16.safetensors`
    variant, then `.bin` (and its fp16 variant)."""
    config = component_config(folder, component)
    sub = Path(folder) / component
    weight_names = COMPONENTS[component][1]
    for name in weight_names:
        if (sub / name).is_file():
            return config, sub / name
    raise ModelFolderError(f"{sub}: no {weight_names[0]} (or {', '.join(weight_names[1:])}) weights; "
                           "download the model's weights (sharded checkpoints are unsupported)")


def component_config(folder, component: str) -> dict:
    """One component's checked config.json: all a single file's `model.config` folder needs (no weights)."""
    folder = Path(folder)
    classes = COMPONENTS[component][0]
    sub = folder / component
    config_path = sub / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{config_path}: missing; {folder} is not a complete diffusers SD model folder "
                               "(needs unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{config_path}: unreadable JSON ({e}); download the model again") from e
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if name not in classes:
        raise ModelFolderError(f"{config_path}: {component} class {name!r} is unsupported (need "
                               f"{'/'.join(sorted(classes))}); use a Stable Diffusion 1.x or 2.x model folder")
    return config


def scheduler_config(folder) -> dict:
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; the model folder needs scheduler/scheduler_config.json")
    return json.loads(path.read_text())
