"""Where a model's configs, weights, tokenizer and scheduler come from: a diffusers folder or a single file.

`open_model(path, options)` gives the loader (common/sd/pipeline.py) and the launch check
(common/model_check.py) one interface over both, so the two read the same things the same way:
`config(component)`, `header(component)` (our parameter names and shapes, no tensor data),
`weights(component)` (a mapping that reads one tensor per lookup), `scheduler_config()`, `tokenizer`
and `notes` (what the launcher should say). Jittor-free.
"""
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, Optional

from common.sd import single_file
from common.sd.configs import text_encoder_key, vae_key
from common.sd.model_folder import (ModelFolderError, component_config, component_files, resolve_model_folder,
                                    scheduler_config)
from common.sd.weights import WeightFileError, inspect_weights, open_weights

COMPONENTS = ("unet", "vae", "text_encoder")
PREDICTIONS = ("auto", "v_prediction", "epsilon")
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"


class ModelOptions(NamedTuple):
    """The run config's `model.*` keys beyond the path (docs/engine.md §13)."""
    ema: bool = False  # single files: the UNet's model_ema.* weights
    prediction: str = "auto"  # auto: the folder's scheduler config, or the single file's inference
    image_size: Optional[int] = None  # single files: the UNet/VAE sample size (default 768 v / 512)
    tokenizer: Optional[str] = None  # single files: a tokenizer folder, a diffusers folder or a CLIP BPE .txt.gz
    config: Optional[str] = None  # single files: a diffusers folder (or repo id) whose configs describe the file


def options_of(model) -> ModelOptions:
    """ModelOptions from an object with the `model.*` attributes (the run config's ModelConfig)."""
    return ModelOptions(**{k: getattr(model, k) for k in ModelOptions._fields if hasattr(model, k)})


class Tokenizer(NamedTuple):
    """A diffusers `tokenizer/` folder, or a CLIP BPE merges file (`bpe`) with the pad token to use."""
    folder: Optional[Path] = None
    bpe: Optional[Path] = None
    pad_token: Optional[str] = None


class _Renamed(Mapping):
    """{our name: array} over an open weight file, read on lookup; `shapes` without reading."""

    def __init__(self, file, sources: dict):
        self.file, self.sources = file, sources
        self.shapes = {name: src.shape(file.header[src.key][1]) for name, src in sources.items()}

    def __getitem__(self, name):
        return self.sources[name].take(self.file[self.sources[name].key])

    def __iter__(self):
        return iter(self.sources)

    def __len__(self):
        return len(self.sources)

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.file.close()


def _folder_sources(component: str, header: dict) -> dict:
    """Our names of a diffusers component file's keys (old VAE attention names, transformers 5's text keys)."""
    sources = {}
    for key, (_, shape) in header.items():
        if component == "vae":
            new = vae_key(key)
            sources[new] = single_file.Source(key, flatten=new != key and key.endswith(".weight") and len(shape) == 4)
        else:
            sources[text_encoder_key(key) if component == "text_encoder" else key] = single_file.Source(key)
    return sources


class DiffusersFolder:
    """A diffusers model folder (or repo id in the HF cache), read as docs/engine.md §8-9 describe."""

    def __init__(self, folder: Path, options: ModelOptions):
        self.where, self.options, self.notes = folder, options, []
        self.tokenizer = Tokenizer(folder=folder / "tokenizer")

    def files(self, component: str):
        return component_files(self.where, component)

    def config(self, component: str) -> dict:
        return self.files(component)[0]

    def config_path(self, component: str) -> Path:
        return self.where / component / "config.json"

    def weights_path(self, component: str) -> Path:
        return self.files(component)[1]

    def header(self, component: str) -> dict:
        path = self.weights_path(component)
        header = inspect_weights(path)
        return {name: src.shape(header[src.key][1]) for name, src in _folder_sources(component, header).items()}

    def weights(self, component: str) -> _Renamed:
        file = open_weights(self.weights_path(component))
        return _Renamed(file, _folder_sources(component, file.header))

    def scheduler_config(self) -> dict:
        config = scheduler_config(self.where)
        if self.options.prediction != "auto" and isinstance(config, dict):
            config = {**config, "prediction_type": self.options.prediction}
        return config


class SingleFile:
    """An LDM-layout single-file checkpoint (`.safetensors`, or a torch zip `.ckpt`/`.pt` through the safe
    reader); configs from `options.config`'s folder, else inferred (common/sd/single_file.py)."""

    def __init__(self, path: Path, options: ModelOptions):
        self.where, self.options, self.notes = path, options, []
        stored = inspect_weights(path, checkpoint=True)
        self.stored = {k: shape for k, (_, shape) in stored.items()}
        layout = single_file.text_layout(self.stored)
        if layout is None or not any(k.startswith(single_file.UNET_PREFIX) for k in self.stored):
            raise WeightFileError(f"{path}: holds no {single_file.UNET_PREFIX}* UNet or cond_stage_model.* text "
                                  "encoder, so it is not a Stable Diffusion 1.x/2.x single-file checkpoint; "
                                  "use an SD checkpoint or a diffusers model folder")
        self.layout = layout
        folder = self._config_folder()
        self.folder = folder
        if options.prediction != "auto":
            prediction = options.prediction
        elif folder is not None:
            prediction = scheduler_config(folder).get("prediction_type", "epsilon")
        else:
            prediction = single_file.default_prediction(self.stored)
        self.prediction = prediction
        if folder is not None:
            self.configs = {c: component_config(folder, c) for c in COMPONENTS}
            if options.image_size:
                self.configs["unet"] = {**self.configs["unet"], "sample_size": options.image_size // 8}
                self.configs["vae"] = {**self.configs["vae"], "sample_size": options.image_size}
        else:
            size = options.image_size or (768 if layout == "openclip" and prediction == "v_prediction" else 512)
            try:
                self.configs = single_file.infer_configs(self.stored, prediction, size)._asdict()
            except (ValueError, IndexError, TypeError) as e:
                raise WeightFileError(f"{path}: {e}; set model.config to a diffusers folder describing it") from None
        ema_keys = [k for k in self.stored if k.startswith(single_file.EMA_PREFIX)]
        self.ema = options.ema and len(ema_keys) > 0
        if options.ema and not self.ema:
            self.notes.append(f"{path}: model.ema is true but the file holds no model_ema.* weights; its UNet "
                              "weights are used as they are (files named *-ema-* already hold the EMA weights)")
        self.tokenizer = self._tokenizer()

    def _config_folder(self) -> Optional[Path]:
        if not self.options.config:
            return None
        try:
            return resolve_model_folder(self.options.config)
        except ModelFolderError as e:
            raise ModelFolderError(f"model.config: {e}") from None

    def _tokenizer(self) -> Tokenizer:
        pad = "!" if self.layout == "openclip" else "<|endoftext|>"  # as SD 2.x's and SD 1.x's tokenizer folders
        given = self.options.tokenizer
        if given:
            path = Path(given).expanduser()
            if path.is_dir():
                folder = path / "tokenizer" if (path / "tokenizer").is_dir() else path
                return Tokenizer(folder=folder)
            if path.is_file() and path.name.endswith(".txt.gz"):
                return Tokenizer(bpe=path, pad_token=pad)
            raise ModelFolderError(f"model.tokenizer: {path} is not a tokenizer folder (vocab.json + merges.txt), a "
                                   "diffusers model folder or a CLIP BPE file (bpe_simple_vocab_16e6.txt.gz); "
                                   "point it at one of those")
        if self.folder is not None:
            return Tokenizer(folder=self.folder / "tokenizer")
        spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (or torch)
        for where in (spec.submodule_search_locations or []) if spec else []:
            if (Path(where) / OPEN_CLIP_BPE).is_file():
                return Tokenizer(bpe=Path(where) / OPEN_CLIP_BPE, pad_token=pad)
        raise ModelFolderError(f"{self.where}: a single-file checkpoint holds no tokenizer; set model.tokenizer to a "
                               "tokenizer folder (vocab.json + merges.txt), a diffusers SD folder, or open_clip's "
                               f"{OPEN_CLIP_BPE} (or pip install open-clip-torch)")

    def config(self, component: str) -> dict:
        return self.configs[component]

    def config_path(self, component: str):
        return (self.folder / component / "config.json") if self.folder else f"{self.where} ({component}, inferred)"

    def weights_path(self, component: str) -> Path:
        return self.where

    def sources(self, component: str) -> dict:
        names, unknown = single_file.ldm_names(component, self.stored, self.configs[component],
                                               ema=self.ema and component == "unet")
        if unknown:
            raise WeightFileError(f"{self.where}: {len(unknown)} {component} keys of no SD layout (e.g. "
                                  f"{', '.join(unknown[:2])}); not a Stable Diffusion 1.x/2.x checkpoint, or a "
                                  "variant (inpainting, SDXL) this engine does not build")
        missing = [src.key for src in names.values() if src.key not in self.stored]
        if missing:
            raise WeightFileError(f"{self.where}: model.ema is true but {len(missing)} UNet weights have no EMA twin "
                                  f"(e.g. {missing[0]}); set model.ema: false")
        return names

    def header(self, component: str) -> dict:
        return {name: src.shape(self.stored[src.key]) for name, src in self.sources(component).items()}

    def weights(self, component: str) -> _Renamed:
        return _Renamed(open_weights(self.where, checkpoint=True), self.sources(component))

    def scheduler_config(self) -> dict:
        if self.folder is not None:
            return {**scheduler_config(self.folder), "prediction_type": self.prediction}
        return single_file.scheduler_config(self.prediction)


def open_model(path_or_repo_id, options: ModelOptions = ModelOptions()):
    """A DiffusersFolder or SingleFile for `path_or_repo_id` (a folder, a repo id in the HF cache, or a
    `.safetensors`/`.ckpt`/`.pt` file). Raises ModelFolderError or WeightFileError (one line, with the fix)."""
    if options.prediction not in PREDICTIONS:
        raise ValueError(f"model.prediction {options.prediction!r}: use one of {', '.join(PREDICTIONS)}")
    if single_file.is_single_file(path_or_repo_id):
        return SingleFile(Path(str(path_or_repo_id)).expanduser(), options)
    return DiffusersFolder(resolve_model_folder(path_or_repo_id), options)
