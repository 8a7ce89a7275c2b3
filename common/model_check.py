"""Check a model folder and LoRA files at launch, without Jittor and without reading tensor data.

The launcher never imports Jittor, yet a broken model file used to cost every worker its start-up (five
of them, then a parked slot). Here each component's `config.json` is checked against what our modules
accept, and the weight file's header (`common.sd.weights.inspect_weights`: names, dtypes, shapes, sizes
against the file) against the parameter names and shapes that config implies. Those are computed from
the config by the rules below, which mirror the modules' constructors (`common/sd/unet.py`, `vae.py`,
`clip.py`); `tests/test_model_check.py` builds the real Jittor modules and checks both agree, so the two
cannot drift apart unnoticed. A LoRA is checked by the engine's own reader (`common.sd.lora.LoraSet`)
against the Linear layers named in the model's headers; a LoRA file is a few MB, so reading it is cheap.

Every problem is one `ModelCheckError` line naming the file and the fix.
"""
import functools
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Tuple

from common.sd.model_folder import ModelFolderError, component_files, resolve_model_folder, scheduler_config
from common.sd.weights import WeightFileError, inspect_weights

Shapes = Dict[str, Tuple[int, ...]]


class ModelCheckError(ValueError):
    """A model folder or LoRA file the workers could not load (one line naming the file and the fix)."""


# -- what our modules accept (mirrors common/sd/unet.py, vae.py, clip.py) ----------------------------------
UNET_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
UNET_FIXED = {
    "mid_block_type": "UNetMidBlock2DCrossAttn", "act_fn": "silu",
    "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "time_cond_proj_dim": None, "time_embedding_type": "positional",
    "time_embedding_act_fn": None, "time_embedding_dim": None, "timestep_post_act": None,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "only_cross_attention": False, "dual_cross_attention": False, "center_input_sample": False,
    "cross_attention_norm": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "num_attention_heads": None,
    "attention_type": "default", "downsample_padding": 1, "mid_block_scale_factor": 1,
    "class_embeddings_concat": False, "dropout": 0.0,
}
UNET_DEFAULTS = {
    "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1280, "attention_head_dim": 8, "use_linear_projection": False,
    "upcast_attention": False,
}
VAE_DEFAULTS = {"in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1,
                "latent_channels": 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215}
VAE_SUPPORTED = {  # key: (test, what is accepted)
    "down_block_types": (lambda v: all(t == "DownEncoderBlock2D" for t in v), "DownEncoderBlock2D only"),
    "up_block_types": (lambda v: all(t == "UpDecoderBlock2D" for t in v), "UpDecoderBlock2D only"),
    "act_fn": (lambda v: v == "silu", "silu"),
    "mid_block_add_attention": (lambda v: v is True, "true"),
    "use_quant_conv": (lambda v: v is True, "true"),
    "use_post_quant_conv": (lambda v: v is True, "true"),
    "shift_factor": (lambda v: v in (None, 0, 0.0), "none"),
    "latents_mean": (lambda v: v is None, "none"),
    "latents_std": (lambda v: v is None, "none"),
}
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5}
TEXT_ACTIVATIONS = ("gelu", "quick_gelu")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _ints(cfg: dict, *keys):
    for key in keys:
        values = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        if not values or not all(_positive_int(v) for v in values):
            raise ValueError(f"{key}={cfg[key]!r} is not a positive integer (or a list of them)")


class _Params:
    """Collects {name: shape} as the modules' constructors would create them."""

    def __init__(self):
        self.shapes: Shapes = {}

    def linear(self, name, n_in, n_out, bias=True):
        self.shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            self.shapes[f"{name}.bias"] = (n_out,)

    def conv(self, name, n_in, n_out, k):
        self.shapes[f"{name}.weight"] = (n_out, n_in, k, k)
        self.shapes[f"{name}.bias"] = (n_out,)

    def norm(self, name, channels, groups=None):
        if groups is not None and channels % groups:
            raise ValueError(f"{channels} channels do not split into norm_num_groups={groups} groups")
        self.shapes[f"{name}.weight"] = (channels,)
        self.shapes[f"{name}.bias"] = (channels,)

    def resnet(self, name, n_in, n_out, temb, groups):
        self.norm(f"{name}.norm1", n_in, groups)
        self.conv(f"{name}.conv1", n_in, n_out, 3)
        if temb:
            self.linear(f"{name}.time_emb_proj", temb, n_out)
        self.norm(f"{name}.norm2", n_out, groups)
        self.conv(f"{name}.conv2", n_out, n_out, 3)
        if n_in != n_out:
            self.conv(f"{name}.conv_shortcut", n_in, n_out, 1)

    def attention(self, name, dim, context):
        for proj, n_in in (("to_q", dim), ("to_k", context), ("to_v", context)):
            self.linear(f"{name}.{proj}", n_in, dim, bias=False)
        self.linear(f"{name}.to_out.0", dim, dim)

    def transformer(self, name, channels, heads, cfg):
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into attention_head_dim={heads} heads")
        self.norm(f"{name}.norm", channels, cfg["norm_num_groups"])
        project = self.linear if cfg["use_linear_projection"] else (lambda n, i, o: self.conv(n, i, o, 1))
        project(f"{name}.proj_in", channels, channels)
        block = f"{name}.transformer_blocks.0"
        self.norm(f"{block}.norm1", channels)
        self.attention(f"{block}.attn1", channels, channels)
        self.norm(f"{block}.norm2", channels)
        self.attention(f"{block}.attn2", channels, cfg["cross_attention_dim"])
        self.norm(f"{block}.norm3", channels)
        self.linear(f"{block}.ff.net.0.proj", channels, 8 * channels)
        self.linear(f"{block}.ff.net.2", 4 * channels, channels)
        project(f"{name}.proj_out", channels, channels)


def unet_params(config: dict) -> Shapes:
    """{name: shape} of common.sd.unet.UNet2DConditionModel(config); ValueError where it refuses the config."""
    cfg = {**UNET_DEFAULTS, **config}
    for key, accepted in UNET_FIXED.items():
        value = cfg.get(key, accepted)
        values = value if isinstance(value, (list, tuple)) and not isinstance(accepted, (list, tuple)) else [value]
        if any(v != accepted for v in values):
            raise ValueError(f"{key}={value!r} is not supported (SD 1.x/2.x UNets need {accepted!r})")
    for key, allowed in (("down_block_types", UNET_DOWN_BLOCKS), ("up_block_types", UNET_UP_BLOCKS)):
        if not isinstance(cfg[key], list) or not all(block in allowed for block in cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r} is not supported (entries among {allowed})")
    layers = cfg.get("transformer_layers_per_block", 1)
    if any(n != 1 for n in (layers if isinstance(layers, (list, tuple)) else [layers])):
        raise ValueError(f"transformer_layers_per_block={layers!r} is not supported (only 1)")
    for key in ("layers_per_block", "cross_attention_dim"):
        if not _positive_int(cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r} is not supported (one int for every block)")
    _ints(cfg, "block_out_channels", "attention_head_dim", "in_channels", "out_channels", "norm_num_groups")
    channels = list(cfg["block_out_channels"])
    levels = len(channels)
    heads = cfg["attention_head_dim"]
    heads = list(heads) if isinstance(heads, list) else [heads] * levels
    if len(cfg["down_block_types"]) != levels or len(cfg["up_block_types"]) != levels or len(heads) != levels:
        raise ValueError("down_block_types, up_block_types and attention_head_dim need one entry per "
                         "block_out_channels")
    groups, n, temb = cfg["norm_num_groups"], cfg["layers_per_block"], channels[0] * 4
    p = _Params()
    p.conv("conv_in", cfg["in_channels"], channels[0], 3)
    p.linear("time_embedding.linear_1", channels[0], temb)
    p.linear("time_embedding.linear_2", temb, temb)
    for i, kind in enumerate(cfg["down_block_types"]):
        n_in, n_out = channels[max(i - 1, 0)], channels[i]
        for j in range(n):
            p.resnet(f"down_blocks.{i}.resnets.{j}", n_in if j == 0 else n_out, n_out, temb, groups)
            if kind == "CrossAttnDownBlock2D":
                p.transformer(f"down_blocks.{i}.attentions.{j}", n_out, heads[i], cfg)
        if i < levels - 1:
            p.conv(f"down_blocks.{i}.downsamplers.0.conv", n_out, n_out, 3)
    for j in range(2):
        p.resnet(f"mid_block.resnets.{j}", channels[-1], channels[-1], temb, groups)
    p.transformer("mid_block.attentions.0", channels[-1], heads[-1], cfg)
    rev, rev_heads = channels[::-1], heads[::-1]
    for i, kind in enumerate(cfg["up_block_types"]):
        n_skip, n_prev, n_out = rev[min(i + 1, levels - 1)], rev[max(i - 1, 0)], rev[i]
        for j in range(n + 1):
            n_in = (n_prev if j == 0 else n_out) + (n_skip if j == n else n_out)
            p.resnet(f"up_blocks.{i}.resnets.{j}", n_in, n_out, temb, groups)
            if kind == "CrossAttnUpBlock2D":
                p.transformer(f"up_blocks.{i}.attentions.{j}", n_out, rev_heads[i], cfg)
        if i < levels - 1:
            p.conv(f"up_blocks.{i}.upsamplers.0.conv", n_out, n_out, 3)
    p.norm("conv_norm_out", channels[0], groups)
    p.conv("conv_out", channels[0], cfg["out_channels"], 3)
    return p.shapes


def vae_params(config: dict) -> Shapes:
    """{name: shape} of common.sd.vae.AutoencoderKL(config); ValueError where it refuses the config."""
    cfg = {**VAE_DEFAULTS, **config}
    for key, (ok, accepted) in VAE_SUPPORTED.items():
        if key in cfg and not ok(cfg[key]):
            raise ValueError(f"{key}={cfg[key]!r} is not supported ({accepted}; SD AutoencoderKL only)")
    _ints(cfg, "block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "in_channels",
          "out_channels")
    chans, groups, layers = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
    for key in ("down_block_types", "up_block_types"):
        if key in cfg and len(cfg[key]) != len(chans):
            raise ValueError(f"{key} has {len(cfg[key])} entries, block_out_channels {len(chans)}")
    latent = cfg["latent_channels"]
    p = _Params()

    def mid(name, c):
        for j in range(2):
            p.resnet(f"{name}.resnets.{j}", c, c, None, groups)
        attn = f"{name}.attentions.0"
        p.norm(f"{attn}.group_norm", c, groups)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            p.linear(f"{attn}.{proj}", c, c)

    p.conv("encoder.conv_in", cfg["in_channels"], chans[0], 3)
    for i, c in enumerate(chans):
        for j in range(layers):
            p.resnet(f"encoder.down_blocks.{i}.resnets.{j}", chans[max(i - 1, 0)] if j == 0 else c, c, None, groups)
        if i < len(chans) - 1:
            p.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    mid("encoder.mid_block", chans[-1])
    p.norm("encoder.conv_norm_out", chans[-1], groups)
    p.conv("encoder.conv_out", chans[-1], 2 * latent, 3)
    rev = chans[::-1]
    p.conv("decoder.conv_in", latent, rev[0], 3)
    mid("decoder.mid_block", rev[0])
    for i, c in enumerate(rev):
        for j in range(layers + 1):
            p.resnet(f"decoder.up_blocks.{i}.resnets.{j}", rev[max(i - 1, 0)] if j == 0 else c, c, None, groups)
        if i < len(rev) - 1:
            p.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c, 3)
    p.norm("decoder.conv_norm_out", rev[-1], groups)
    p.conv("decoder.conv_out", rev[-1], cfg["out_channels"], 3)
    p.conv("quant_conv", 2 * latent, 2 * latent, 1)
    p.conv("post_quant_conv", latent, latent, 1)
    return p.shapes


def text_encoder_params(config: dict) -> Shapes:
    """{name: shape} of common.sd.clip.CLIPTextModel(config); ValueError where it refuses the config."""
    cfg = {**TEXT_DEFAULTS, **{k: v for k, v in config.items() if k in TEXT_DEFAULTS}}
    if cfg["hidden_act"] not in TEXT_ACTIVATIONS:
        raise ValueError(f"hidden_act={cfg['hidden_act']!r} is not supported (supported: "
                         f"{', '.join(TEXT_ACTIVATIONS)})")
    _ints(cfg, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "max_position_embeddings")
    dim = cfg["hidden_size"]
    if dim % cfg["num_attention_heads"]:
        raise ValueError("hidden_size must be divisible by num_attention_heads")
    p = _Params()
    p.shapes["text_model.embeddings.token_embedding.weight"] = (cfg["vocab_size"], dim)
    p.shapes["text_model.embeddings.position_embedding.weight"] = (cfg["max_position_embeddings"], dim)
    for i in range(cfg["num_hidden_layers"]):
        layer = f"text_model.encoder.layers.{i}"
        p.norm(f"{layer}.layer_norm1", dim)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            p.linear(f"{layer}.self_attn.{proj}", dim, dim)
        p.norm(f"{layer}.layer_norm2", dim)
        p.linear(f"{layer}.mlp.fc1", dim, cfg["intermediate_size"])
        p.linear(f"{layer}.mlp.fc2", cfg["intermediate_size"], dim)
    p.norm("text_model.final_layer_norm", dim)
    return p.shapes


# -- the file names the loader accepts (mirrors the renames in common/sd/vae.py and clip.py) ---------------
_LEGACY_VAE = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_LEGACY_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def _loaded_names(component: str, header: dict) -> Shapes:
    """{name: shape} of a weight file's tensors under the names the loader gives them."""
    out = {}
    for key, (_, shape) in header.items():
        if component == "vae":
            new = _LEGACY_VAE.sub(lambda m: m.group(1) + _LEGACY_VAE_NAMES[m.group(2)] + ".", key)
            if new != key and key.endswith(".weight") and len(shape) == 4:
                shape = shape[:2]  # old 1x1-conv projections load as Linear weights
            key = new
        elif component == "text_encoder" and key.startswith(_TEXT_MODEL_PARTS):
            key = "text_model." + key
        out[key] = tuple(shape)
    return out


PARAMS = {"unet": unet_params, "vae": vae_params, "text_encoder": text_encoder_params}
IGNORED = ("position_ids",)  # buffers some files carry and the loader skips


def _compare(expected: Shapes, got: Shapes, weights: Path, component: str):
    unexpected = [k for k in got if k not in expected and not k.endswith(IGNORED)]
    missing = [k for k in expected if k not in got]
    shapes = [f"{k} {got[k]} vs config {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    for problem, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            raise ModelCheckError(f"{weights}: {len(keys)} {problem} for the {component} its config.json describes "
                                  f"(e.g. {', '.join(keys[:2])}); use the weights that ship with this config")


@functools.lru_cache(maxsize=8)
def _inspect_folder(folder: Path, _stamp) -> Dict[str, Shapes]:
    shapes = {}
    for component, params in PARAMS.items():
        config_path = folder / component / "config.json"
        try:
            config, weights = component_files(folder, component)
        except ModelFolderError as e:
            raise ModelCheckError(str(e)) from None
        except (AttributeError, TypeError):  # valid JSON, but not an object with a class name
            raise ModelCheckError(f"{config_path}: not a {component} config (a JSON object naming its class in "
                                  "_class_name or architectures); download the model again") from None
        try:
            expected = params(config)
        except (ValueError, TypeError, KeyError) as e:
            raise ModelCheckError(f"{config_path}: {component} config: {' '.join(str(e).split())}; use a Stable "
                                  "Diffusion 1.x or 2.x model folder") from None
        try:
            got = _loaded_names(component, inspect_weights(weights))
        except WeightFileError as e:
            raise ModelCheckError(str(e)) from None
        _compare(expected, got, weights, component)
        shapes[component] = expected
    scheduler = folder / "scheduler" / "scheduler_config.json"
    try:
        if not isinstance(scheduler_config(folder), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ModelCheckError(f"{scheduler}: {' '.join(str(e).split())[:200]}; restore the scheduler config") from None
    tokenizer = folder / "tokenizer"
    names = [n for n in ("vocab.json", "tokenizer.json") if (tokenizer / n).is_file()]
    if not names or (names[0] == "vocab.json" and not (tokenizer / "merges.txt").is_file()):
        raise ModelCheckError(f"{tokenizer}: no vocab.json + merges.txt (or tokenizer.json); restore the tokenizer")
    for name in names[:1]:
        try:
            json.loads((tokenizer / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelCheckError(f"{tokenizer / name}: not valid JSON ({' '.join(str(e).split())[:120]}); "
                                  "restore the tokenizer file") from None
    return shapes


def _stamp(folder: Path) -> tuple:
    """What the verdict depends on: every file's size and mtime (a fixed file is checked again)."""
    out = []
    for path in sorted(folder.glob("*/*")):
        try:
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None, None))
    return tuple(out)


def inspect_model(path_or_repo_id) -> Dict[str, Shapes]:
    """{component: {parameter: shape}} of a model folder every check passed; ModelCheckError otherwise."""
    try:
        folder = resolve_model_folder(path_or_repo_id).resolve()
    except ModelFolderError as e:
        raise ModelCheckError(str(e)) from None
    return _inspect_folder(folder, _stamp(folder))


def attention_blocks(shapes: Dict[str, Shapes]) -> list:
    """The UNet's attention blocks (`up_blocks.2.attentions.0`, ...), the names consumer.layers uses."""
    return sorted({m.group(0) for k in shapes["unet"]
                   for m in [re.match(r"(down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.0", k)]
                   if m})


class _ShapesOnly:
    """Stands in for a model in LoraSet.read: its state_dict() gives each parameter's shape, no data."""

    def __init__(self, shapes: Shapes):
        self._state = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}

    def state_dict(self):
        return self._state


def check_lora_file(path, model: Dict[str, Shapes]):
    """Parse a LoRA's header, then validate it as a worker would (LoRA keys, modules this model has,
    shapes that fit); ModelCheckError naming the file otherwise."""
    from common.sd.lora import LoraError, LoraSet
    try:
        inspect_weights(path)
        LoraSet.read(path, _ShapesOnly(model["unet"]), _ShapesOnly(model["text_encoder"]))
    except (WeightFileError, LoraError) as e:
        raise ModelCheckError(" ".join(str(e).split())) from None
