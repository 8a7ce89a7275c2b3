"""Random-weight DINOv2 and CLIP folders for the score's ViTs, in the files transformers reads (NumPy only).

`write_dino(folder)` and `write_clip(folder)` write config.json, model.safetensors and
preprocessor_config.json as the Hugging Face snapshots of `facebook/dinov2-base` and
`openai/clip-vit-large-patch14` hold them (CLIP also gets its tokenizer files, rebuilt from the shipped
BPE merges), so transformers' `from_pretrained` and our loaders read the same bytes. `small=True` keeps
the real patch size (14), image sizes and processors but few, narrow layers, so Jittor compiles few
shapes; `small=False` writes the real architectures (for the benchmark; ~350 MB and ~1.7 GB).

Weights follow `vit_param`: seeded by the tensor's name (as `tiny_weights.tiny_param`), scaled so that
every block changes the features (linear and conv weights ~ 1/sqrt(fan-in), layer scales and norm
weights near 1), since a network that is nearly the identity would let a wrong block pass a parity test.
"""
import json
import math
import zlib
from pathlib import Path

import numpy as np

from common.devkit.assets.clip_bpe import write_tokenizer_folder
from common.devkit.tiny_weights import SEED, tiny_param

DINO_BASE = {
    "architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    "image_size": 518, "patch_size": 14, "num_channels": 3, "qkv_bias": True, "layerscale_value": 1.0,
    "use_swiglu_ffn": False, "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "torch_dtype": "float32",
}
DINO_SMALL = {**DINO_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
DINO_PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor", "image_std": [0.229, 0.224, 0.225], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256},
}

_CLIP_TEXT_LARGE = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
_CLIP_VISION_LARGE = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "num_channels": 3, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768,
}
CLIP_LARGE = {
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
    "logit_scale_init_value": 2.6592, "torch_dtype": "float32",
    "text_config": _CLIP_TEXT_LARGE, "vision_config": _CLIP_VISION_LARGE,
}
# The text tower's sizes are the tiny SD text encoder's (shapes Jittor has compiled for other tests);
# the vision tower's differ from it so that a swapped tensor cannot load.
CLIP_SMALL = {
    **CLIP_LARGE, "projection_dim": 24,
    "text_config": {**_CLIP_TEXT_LARGE, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "projection_dim": 24},
    "vision_config": {**_CLIP_VISION_LARGE, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 3, "projection_dim": 24},
}
# openai/clip-vit-large-patch14's (legacy) file: int sizes, read as shortest edge 224 and crop 224x224.
CLIP_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


def vit_param(name: str, shape) -> np.ndarray:
    """The float32 value of parameter `name` (see the module docstring)."""
    shape = tuple(shape)
    if name == "logit_scale":
        return np.array(math.log(100.0), np.float32).reshape(shape)  # CLIP's trained value, temperature 1/100
    rng = np.random.default_rng((SEED ^ zlib.crc32(name.encode())) & 0xFFFFFFFF)
    x = rng.standard_normal(shape).astype(np.float32)
    if name.endswith(".lambda1"):
        return (1.0 + 0.1 * x).astype(np.float32)
    if len(shape) == 1 and ("norm" in name.rsplit(".", 2)[-2] or name.endswith(".bias")):
        return tiny_param(name, shape)  # norms 1 + 0.1 N and 0.1 N, like the tiny SD model; biases 0.05 N
    if len(shape) >= 2 and name.endswith(".weight") and not name.endswith("_embedding.weight"):
        return x * np.float32(1 / math.sqrt(math.prod(shape[1:])))  # float32 math in NumPy 1 and 2 alike
    return (0.5 * x).astype(np.float32)  # embedding tables, class/CLS/mask tokens, position embeddings


def dinov2_shapes(config: dict) -> dict:
    """{key: shape} of transformers' Dinov2Model for `config`."""
    d, p = config["hidden_size"], config["patch_size"]
    hidden = int(d * config["mlp_ratio"])
    shapes = {"embeddings.cls_token": (1, 1, d), "embeddings.mask_token": (1, d),
              "embeddings.position_embeddings": (1, (config["image_size"] // p) ** 2 + 1, d),
              "embeddings.patch_embeddings.projection.weight": (d, config["num_channels"], p, p),
              "embeddings.patch_embeddings.projection.bias": (d,)}
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        for name, out, inp in (("attention.attention.query", d, d), ("attention.attention.key", d, d),
                               ("attention.attention.value", d, d), ("attention.output.dense", d, d),
                               ("mlp.fc1", hidden, d), ("mlp.fc2", d, hidden)):
            shapes[f"{layer}{name}.weight"], shapes[f"{layer}{name}.bias"] = (out, inp), (out,)
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                     "layer_scale1.lambda1", "layer_scale2.lambda1"):
            shapes[layer + name] = (d,)
    shapes["layernorm.weight"] = shapes["layernorm.bias"] = (d,)
    return shapes


def _clip_encoder_shapes(prefix: str, cfg: dict) -> dict:
    d, hidden = cfg["hidden_size"], cfg["intermediate_size"]
    shapes = {}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"{prefix}encoder.layers.{i}."
        for name, out, inp in (("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d), ("self_attn.v_proj", d, d),
                               ("self_attn.out_proj", d, d), ("mlp.fc1", hidden, d), ("mlp.fc2", d, hidden)):
            shapes[f"{layer}{name}.weight"], shapes[f"{layer}{name}.bias"] = (out, inp), (out,)
        for name in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}{name}.weight"] = shapes[f"{layer}{name}.bias"] = (d,)
    return shapes


def clip_shapes(config: dict) -> dict:
    """{key: shape} of transformers' CLIPModel for `config`."""
    text, vision, proj = config["text_config"], config["vision_config"], config["projection_dim"]
    dt, dv, p = text["hidden_size"], vision["hidden_size"], vision["patch_size"]
    shapes = {"text_model.embeddings.token_embedding.weight": (text["vocab_size"], dt),
              "text_model.embeddings.position_embedding.weight": (text["max_position_embeddings"], dt),
              **_clip_encoder_shapes("text_model.", text),
              "text_model.final_layer_norm.weight": (dt,), "text_model.final_layer_norm.bias": (dt,),
              "vision_model.embeddings.class_embedding": (dv,),
              "vision_model.embeddings.patch_embedding.weight": (dv, vision["num_channels"], p, p),
              "vision_model.embeddings.position_embedding.weight": ((vision["image_size"] // p) ** 2 + 1, dv),
              "vision_model.pre_layrnorm.weight": (dv,), "vision_model.pre_layrnorm.bias": (dv,),
              **_clip_encoder_shapes("vision_model.", vision),
              "vision_model.post_layernorm.weight": (dv,), "vision_model.post_layernorm.bias": (dv,),
              "visual_projection.weight": (proj, dv), "text_projection.weight": (proj, dt), "logit_scale": ()}
    return shapes


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_model(folder, config: dict, shapes: dict, preprocessor: dict) -> Path:
    from safetensors.numpy import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    _write_json(folder / "preprocessor_config.json", preprocessor)
    save_file({name: vit_param(name, shape) for name, shape in shapes.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def write_dino(folder, small: bool = True) -> Path:
    """A `facebook/dinov2-base`-shaped folder (small: 2 layers of width 32) with `vit_param` weights."""
    config = DINO_SMALL if small else DINO_BASE
    return _write_model(folder, config, dinov2_shapes(config), DINO_PREPROCESSOR)


def write_clip(folder, small: bool = True) -> Path:
    """An `openai/clip-vit-large-patch14`-shaped folder with its tokenizer (small: 2 narrow layers per tower)."""
    config = CLIP_SMALL if small else CLIP_LARGE
    folder = _write_model(folder, config, clip_shapes(config), CLIP_PREPROCESSOR)
    write_tokenizer_folder(folder, pad_token="<|endoftext|>")
    return folder
