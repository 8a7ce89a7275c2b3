"""LoRA: read every common key format into one form, merge into Linear and Conv2d weights, swap and
remove exactly.

A LoRA file (JDiffusion: `pytorch_lora_weights.bin`, diffusers: `.safetensors`) holds, per Linear module,
`down` (r, in) and `up` (out, r) and maybe `alpha`; per Conv2d module (peft's conv LoRA) `down`
(r, in, kh, kw) and `up` (out, r, 1, 1). Merging W ← W + s·(α/r)·(up @ down) in fp32 (for a conv, over
the flattened kernels) equals diffusers' `load_lora_weights` + `fuse_lora`. The original weights of
touched modules are kept, so removing or swapping a LoRA restores them bit for bit without reading the
base model again.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.sd.weights import read_weights

MODELS = ("unet", "text_encoder")
# key endings → which half; the diffusers, text-encoder, peft, kohya and old processor spellings
_PARTS = ((".lora.down.weight", "down"), (".lora.up.weight", "up"),
          (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
          (".lora_A.weight", "down"), (".lora_B.weight", "up"),
          (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
          (".lora_down.weight", "down"), (".lora_up.weight", "up"),
          (".down.weight", "down"), (".up.weight", "up"), (".alpha", "alpha"))
# old attention-processor names (`attn1.processor.to_q_lora`) → module names, per model
_OLD_NAMES = {"unet": {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"},
              "text_encoder": {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj",
                               "to_out_lora": "out_proj"}}
_KOHYA = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}


class LoraError(ValueError):
    """A LoRA file that does not fit the model (message names the file, the key and the fix)."""


@dataclass(frozen=True)
class LoraLayer:
    model: str          # "unet" | "text_encoder"
    module: str         # our module path, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    down: np.ndarray    # (r, in) float32; a conv's (r, in, kh, kw)
    up: np.ndarray      # (out, r) float32; a conv's (out, r, 1, 1)
    alpha: float        # α; ΔW = s·(α/r)·(up @ down)

    def delta(self, scale: float) -> np.ndarray:
        r = self.down.shape[0]
        product = self.up.reshape(-1, r).astype(np.float32) @ self.down.reshape(r, -1).astype(np.float32)
        return (scale * self.alpha / r) * product.reshape((self.up.shape[0],) + self.down.shape[1:])


def _linear_weights(model) -> dict:
    """{module path: weight Var} of the model's Linear (2-D) and Conv2d (4-D) weights."""
    return {k[:-len(".weight")]: v for k, v in model.state_dict().items()
            if k.endswith(".weight") and len(v.shape) in (2, 4)}


def _split_key(key: str, kohya_names: dict):
    """(model, module, part) of one LoRA key, in our module names; None where the key is not LoRA."""
    for prefix, model in _KOHYA.items():
        if key.startswith(prefix):
            base, _, rest = key[len(prefix):].partition(".")
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(rest)
            return (model, kohya_names[model].get(base, prefix + base), part) if part else None
    part = next(((end, p) for end, p in _PARTS if key.endswith(end)), None)
    if part is None:
        return None
    module = key[:-len(part[0])].replace(".processor.", ".")
    model = "unet"
    for name in MODELS:
        if module.startswith(name + "."):
            model, module = name, module[len(name) + 1:]
            break
    else:
        if module.startswith("text_model."):
            model = "text_encoder"
    head, _, last = module.rpartition(".")
    if last in _OLD_NAMES[model]:
        module = f"{head}.{_OLD_NAMES[model][last]}"
    elif part[0] in (".down.weight", ".up.weight"):
        return None
    return model, module, part[1]


@dataclass(frozen=True)
class LoraSet:
    """The validated layers of one LoRA file."""
    path: Path
    layers: tuple

    @classmethod
    def read(cls, path, unet, text_encoder=None) -> "LoraSet":
        """Read and validate `path` against the models (module exists, shapes fit, both halves present)."""
        path = Path(path)
        models = {"unet": unet, "text_encoder": text_encoder}
        weights = {m: _linear_weights(models[m]) if models[m] is not None else {} for m in MODELS}
        kohya_names = {m: {k.replace(".", "_"): k for k in weights[m]} for m in MODELS}
        parts = {}
        for key, value in read_weights(path).items():
            split = _split_key(key, kohya_names)
            if split is None:
                raise LoraError(f"{path}: key {key!r} is not a LoRA key we know (diffusers .lora.down/.up, "
                                "peft lora_A/lora_B, kohya lora_down/lora_up); convert the file to diffusers format")
            model, module, part = split
            if models[model] is None:
                raise LoraError(f"{path}: key {key!r} targets the {model}, which is not loaded here; "
                                f"pass the {model} or drop its keys from the LoRA")
            if module not in weights[model]:
                raise LoraError(f"{path}: key {key!r} targets {model} module {module!r}, which this model lacks; "
                                "the LoRA was trained for another model (use one made for this base model)")
            parts.setdefault((model, module), {})[part] = (key, np.asarray(value, dtype=np.float32))
        layers = []
        for (model, module), got in parts.items():
            if "down" not in got or "up" not in got:
                key = next(iter(got.values()))[0]
                raise LoraError(f"{path}: key {key!r} has no matching {'up' if 'down' in got else 'down'} "
                                "half; the file is incomplete: save the LoRA again")
            (key, down), (_, up) = got["down"], got["up"]
            shape = tuple(weights[model][module].shape)  # (out, in) or a conv's (out, in, kh, kw)
            if down.ndim != len(shape) or down.shape[1:] != shape[1:] or up.shape[:2] != (shape[0], down.shape[0]) \
                    or up.shape[2:] != (1,) * (len(shape) - 2):
                raise LoraError(f"{path}: key {key!r}: down {down.shape} / up {up.shape} do not fit {module} "
                                f"({'x'.join(map(str, shape))}); the LoRA was trained for another model")
            alpha = float(got["alpha"][1]) if "alpha" in got else float(down.shape[0])
            layers.append(LoraLayer(model, module, down, up, alpha))
        if not layers:
            raise LoraError(f"{path}: holds no LoRA tensors; pass a LoRA weights file")
        return cls(path, tuple(layers))


class LoraMerger:
    """Merges one LoRA at a time into the models' Linear and Conv2d weights; keeps originals for an exact undo."""

    def __init__(self, unet, text_encoder=None):
        self.models = {"unet": unet, "text_encoder": text_encoder}
        self._originals = {}     # (model, module) → original weight (NumPy, model dtype)
        self.active = None       # (path, scale) of the merged LoRA

    def apply(self, lora: LoraSet, scale: float = 1.0) -> None:
        """Merge `lora` at `scale`, replacing any merged before (from the kept originals, not by subtracting)."""
        from common.jittor_env import load_jittor
        jt = load_jittor()
        weights = {m: _linear_weights(self.models[m]) for m in MODELS if self.models[m] is not None}
        touched = {(layer.model, layer.module) for layer in lora.layers}
        self._restore(weights, [k for k in self._originals if k not in touched])
        for layer in lora.layers:
            var = weights[layer.model][layer.module]
            key = (layer.model, layer.module)
            if key not in self._originals:
                self._originals[key] = var.numpy().copy()
            original = self._originals[key]
            merged = original.astype(np.float32) + layer.delta(scale)
            var.assign(jt.array(merged.astype(original.dtype)))
        self.active = (lora.path, scale)

    def remove(self) -> None:
        """Put back the original weights of every touched module, bit for bit."""
        weights = {m: _linear_weights(self.models[m]) for m in MODELS if self.models[m] is not None}
        self._restore(weights, list(self._originals))
        self.active = None

    def _restore(self, weights, keys):
        from common.jittor_env import load_jittor
        jt = load_jittor()
        for key in keys:
            weights[key[0]][key[1]].assign(jt.array(self._originals.pop(key)))
