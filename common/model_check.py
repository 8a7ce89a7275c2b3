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
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Tuple

from common.sd.configs import _positive_int, text_config, text_encoder_key, unet_config, vae_config, vae_key
from common.sd.model_folder import ModelFolderError, component_files, resolve_model_folder, scheduler_config
from common.sd.model_source import ModelOptions, open_model, options_of
from common.sd.single_file import is_single_file
from common.sd.weights import WeightFileError, inspect_weights

Shapes = Dict[str, Tuple[int, ...]]


class ModelCheckError(ValueError):
    """A model folder or LoRA file the workers could not load (one line naming the file and the fix)."""


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
    cfg = unet_config(config)
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
    cfg = vae_config(config)
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
    cfg = text_config(config)
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


def _loaded_names(component: str, header: dict) -> Shapes:
    """{name: shape} of a weight file's tensors under the names the loader gives them."""
    out = {}
    for key, (_, shape) in header.items():
        if component == "vae":
            new = vae_key(key)
            if new != key and key.endswith(".weight") and len(shape) == 4:
                shape = shape[:2]  # old 1x1-conv projections load as Linear weights
            key = new
        elif component == "text_encoder":
            key = text_encoder_key(key)
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
    _check_tokenizer_folder(folder / "tokenizer")
    return shapes


def _check_tokenizer_folder(tokenizer: Path) -> None:
    names = [n for n in ("vocab.json", "tokenizer.json") if (tokenizer / n).is_file()]
    if not names or (names[0] == "vocab.json" and not (tokenizer / "merges.txt").is_file()):
        raise ModelCheckError(f"{tokenizer}: no vocab.json + merges.txt (or tokenizer.json); restore the tokenizer")
    for name in names[:1]:
        try:
            json.loads((tokenizer / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelCheckError(f"{tokenizer / name}: not valid JSON ({' '.join(str(e).split())[:120]}); "
                                  "restore the tokenizer file") from None


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


def inspect_model(model) -> Dict[str, Shapes]:
    """{component: {parameter: shape}} of a model every check passed; ModelCheckError otherwise. `model`: a
    path or repo id, or the run config's `model` section (its other keys select how a single file is read)."""
    path = getattr(model, "path", model)
    options = options_of(model) if hasattr(model, "path") else ModelOptions()
    if is_single_file(path):
        file = Path(str(path)).expanduser().resolve()
        stat = file.stat()
        return _inspect_single_file(file, options, (stat.st_size, stat.st_mtime_ns))
    try:
        folder = resolve_model_folder(path).resolve()
    except ModelFolderError as e:
        raise ModelCheckError(str(e)) from None
    return _inspect_folder(folder, _stamp(folder))


@functools.lru_cache(maxsize=8)
def _inspect_single_file(file: Path, options: ModelOptions, _stamp) -> Dict[str, Shapes]:
    """As _inspect_folder, for a single-file checkpoint: the file's keys and shapes (header only) against
    the configs it is read with; then the tokenizer. Notes (e.g. no EMA weights) go to stderr, once."""
    try:
        source = open_model(file, options)
        shapes = {}
        for component, params in PARAMS.items():
            try:
                expected = params(source.config(component))
            except (ValueError, TypeError, KeyError) as e:
                raise ModelCheckError(f"{source.config_path(component)}: {component} config: {' '.join(str(e).split())}; "
                                      "set model.config to the diffusers folder this checkpoint belongs to") from None
            _compare(expected, source.header(component), file, component)
            shapes[component] = expected
        _check_tokenizer(source.tokenizer)
    except (ModelFolderError, WeightFileError, ValueError) as e:
        raise ModelCheckError(" ".join(str(e).split())) from None
    for note in source.notes:
        print(f"jstyleid: {note}", file=sys.stderr)
    return shapes


def _check_tokenizer(tokenizer) -> None:
    if tokenizer.bpe is not None:
        from common.sd.clip_vocab import vocab_and_merges
        try:
            vocab_and_merges(tokenizer.bpe)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ModelCheckError(f"{tokenizer.bpe}: unreadable ({' '.join(str(e).split())[:120]}); point "
                                  "model.tokenizer at CLIP's bpe_simple_vocab_16e6.txt.gz") from None
        return
    _check_tokenizer_folder(tokenizer.folder)


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
