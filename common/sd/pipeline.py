"""StableDiffusion: the loaded SD 2.x components and the few helpers both stages share.

A thin bundle, not a sampler: both stages sample with `common.sd.sampling` over `unet` and `scheduler`.
`shared()` keeps one copy per process, so a worker running both stages loads the model once; `set_lora`
swaps LoRA deltas in place (the base files are read once, at load). Loading checks the process's device
(chosen once by `common.jittor_env.use_device`) and never changes it.
"""
import threading
from pathlib import Path

import numpy as np

from common.jittor_env import load_jittor, require_device
from common.sd.clip import CLIPTextModel, CLIPTokenizer
from common.sd.ddim import DDIMScheduler
from common.sd.lora import LoraMerger, LoraSet
from common.sd.model_folder import resolve_model_folder
from common.sd.model_source import ModelOptions, open_model
from common.sd.single_file import is_single_file
from common.sd.unet import UNet2DConditionModel
from common.sd.vae import AutoencoderKL
from common.sd.weights import load_state_dict

DTYPES = ("float32", "float16")
_SHARED = {}
_SHARED_LOCK = threading.Lock()
_LORA_CACHE_SIZE = 8


class NonFiniteError(ValueError):
    """Latents or decoded images with NaN/inf (e.g. from a broken LoRA): they would become black pixels.
    `.what` names the tensor, `.indices` the batch positions affected."""

    def __init__(self, what: str, indices):
        self.what, self.indices = what, list(indices)
        super().__init__(f"the {what} at batch position(s) {self.indices} has NaN/inf values")


def require_finite(batch, what: str) -> None:
    """Raise NonFiniteError unless every item of `batch` (a Var or array, batch first) is finite."""
    values = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
    finite = np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
    if not finite.all():
        raise NonFiniteError(what, np.flatnonzero(~finite).tolist())


class StableDiffusion:
    """`.unet .vae .text_encoder .tokenizer .scheduler` of one model (`.folder`: its folder or single file). The UNet and text encoder run in
    `dtype`; the VAE always in float32 (SD 2.x's VAE overflows in fp16)."""

    def __init__(self, folder: Path, unet, vae, text_encoder, tokenizer, scheduler, dtype: str, device: str):
        self.folder, self.dtype, self.device = folder, dtype, device
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self._lora = LoraMerger(unet, text_encoder)
        self._lora_sets = {}  # (path, mtime, size) → LoraSet: switching back to a style re-reads nothing

    @classmethod
    def load(cls, path_or_repo_id, dtype: str = "float32", device: str = "cuda",
             options: ModelOptions = ModelOptions()) -> "StableDiffusion":
        """Build the components from `path_or_repo_id` (a diffusers folder, a repo id in the HF cache, or a
        single-file checkpoint; `options`: the run config's other `model.*` keys) offline. Each weight file
        is read one tensor at a time. Raises common.jittor_env.DeviceUnavailable when this process's Jittor
        does not run on `device`."""
        if dtype not in DTYPES:
            raise ValueError(f"model dtype {dtype!r} is unsupported; use one of {DTYPES}")
        require_device(device)
        source = open_model(path_or_repo_id, options)
        models = {}
        for name, cls_, half in (("unet", UNet2DConditionModel, True), ("vae", AutoencoderKL, False),
                                 ("text_encoder", CLIPTextModel, True)):
            config = source.config(name)
            try:
                model = cls_(config)
            except (ValueError, KeyError) as e:
                raise ValueError(f"{source.config_path(name)}: {e}") from e
            if half and dtype == "float16":
                model.float16()  # before loading, so fp16 files load without an fp32 copy
            with source.weights(name) as state:
                load_state_dict(model, state, source.weights_path(name))
            model.eval()
            models[name] = model
        files = source.tokenizer
        tokenizer = CLIPTokenizer.from_folder(files.folder) if files.folder else \
            CLIPTokenizer.from_bpe(files.bpe, files.pad_token)
        scheduler = DDIMScheduler.from_config(source.scheduler_config())
        return cls(source.where, models["unet"], models["vae"], models["text_encoder"], tokenizer, scheduler,
                   dtype, device)

    @classmethod
    def shared(cls, path_or_repo_id, dtype: str = "float32", device: str = "cuda",
               options: ModelOptions = ModelOptions()) -> "StableDiffusion":
        """One loaded copy per (model, options, dtype, device) in this process."""
        where = Path(str(path_or_repo_id)).expanduser()
        where = where if is_single_file(where) else resolve_model_folder(path_or_repo_id)
        key = (str(where.resolve()), tuple(options), dtype, device)
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls.load(path_or_repo_id, dtype, device, options)
            return _SHARED[key]

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along a side (8 for SD): the VAE halves the size at each level but the last."""
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    def encode_prompt(self, prompts: list):
        """Prompts → text-encoder hidden states (B, 77, D) in the model dtype."""
        jt = load_jittor()
        with jt.no_grad():
            return self.text_encoder(jt.array(self.tokenizer(prompts)))

    def decode_latents(self, latents) -> np.ndarray:
        """Scaled latents (B, 4, h, w) → uint8 images (B, 8h, 8w, 3), as diffusers' pipeline outputs them.
        Raises NonFiniteError when a decoded image has NaN/inf (the clamp would make them black pixels)."""
        jt = load_jittor()
        with jt.no_grad():
            z = (latents if isinstance(latents, jt.Var) else jt.array(np.asarray(latents))).float32()
            x = self.vae.decode(z / self.vae.scaling_factor)
            require_finite(x, "decoded image")
            x = ((x / 2 + 0.5).clamp(0.0, 1.0) * 255.0).round()
            return x.numpy().astype(np.uint8).transpose(0, 2, 3, 1)

    def encode_images(self, images: np.ndarray):
        """uint8 images (B, H, W, 3) → scaled posterior means (B, 4, H/8, W/8) float32 Var."""
        jt = load_jittor()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode_images takes uint8 (B, H, W, 3) images, got {images.dtype} {images.shape}")
        x = (images.astype(np.float32) / 255.0) * 2.0 - 1.0
        with jt.no_grad():
            mean, _ = self.vae.encode(jt.array(x.transpose(0, 3, 1, 2)))
            return mean * self.vae.scaling_factor

    def set_lora(self, path=None, scale: float = 1.0) -> None:
        """Merge the LoRA at `path` (replacing any other) at `scale`; None or scale 0 restores the base.
        The same path and scale again does nothing."""
        if path is None or scale == 0:
            if self._lora.active is not None:
                self._lora.remove()
            return
        path = Path(path).resolve()
        if self._lora.active == (path, float(scale)):
            return
        stat = path.stat() if path.is_file() else None
        key = (path, stat.st_mtime_ns, stat.st_size) if stat else (path,)
        lora = self._lora_sets.get(key)
        if lora is None:
            lora = LoraSet.read(path, self.unet, self.text_encoder)
            if len(self._lora_sets) >= _LORA_CACHE_SIZE:
                self._lora_sets.pop(next(iter(self._lora_sets)))
            self._lora_sets[key] = lora
        self._lora.apply(LoraSet(path, lora.layers), float(scale))
