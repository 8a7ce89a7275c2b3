"""Stable Diffusion single-file checkpoints (the original LDM layout) as our modules' weights: Jittor-free.

Model sites distribute SD as one `.safetensors` or `.ckpt` holding the original training code's names:
the UNet under `model.diffusion_model.`, the VAE under `first_stage_model.`, the text encoder under
`cond_stage_model.model.` (SD 2.x: OpenCLIP, attention q/k/v fused into `in_proj`) or
`cond_stage_model.transformer.` (SD 1.x: transformers' CLIP), and optionally the UNet's EMA copy under
`model_ema.` with the dots of each name removed. `ldm_names` maps each stored key to our (diffusers')
parameter names, as diffusers' `from_single_file` converts them; tensors are never renamed in memory: a
lookup reads one stored tensor and slices or reshapes it (docs/engine.md §13).

What the file does not say (head counts, group counts, prediction type, tokenizer) comes from the run
config, else from the rules `infer_configs` states, which are those of SD's own LDM configs.
"""
import re
from typing import NamedTuple, Optional

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
HEAD_WIDTH = 64  # SD 2.x's UNet (num_head_channels) and both CLIP text encoders
SD1_UNET_HEADS = 8  # SD 1.x's UNet (num_heads)
GROUPS = 32  # LDM's GroupNorm32
# OpenCLIP keys SD does not use: the projection and temperature of contrastive training, and the mask buffer
_OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")


class Source(NamedTuple):
    """Where one of our parameters lies in the file: a key, maybe one of the three row blocks of a fused
    q/k/v tensor (`part`), maybe a 1x1 conv read as a Linear weight (`flatten`)."""
    key: str
    part: Optional[int] = None
    flatten: bool = False

    def shape(self, stored: tuple) -> tuple:
        if self.part is not None:
            return (stored[0] // 3,) + tuple(stored[1:])
        return tuple(stored[:2]) if self.flatten else tuple(stored)

    def take(self, array):
        if self.part is not None:
            rows = array.shape[0] // 3
            return array[self.part * rows:(self.part + 1) * rows]
        return array.reshape(array.shape[:2]) if self.flatten else array


def is_single_file(path) -> bool:
    from pathlib import Path
    path = Path(str(path)).expanduser()
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def text_layout(keys) -> Optional[str]:
    """"openclip" (SD 2.x), "clip" (SD 1.x) or None, from the text encoder's keys."""
    if f"{OPENCLIP_PREFIX}token_embedding.weight" in keys:
        return "openclip"
    if any(k.startswith(CLIP_PREFIX) and k.endswith("token_embedding.weight") for k in keys):
        return "clip"
    return None


def ema_key(unet_key: str) -> str:
    """`model.diffusion_model.input_blocks.0.0.weight` -> `model_ema.diffusion_modelinput_blocks00weight`."""
    return EMA_PREFIX + "".join(unet_key.split(".")[1:])


# ---- stored name -> our name ---------------------------------------------------------------------------------

_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_UNET_TOP = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
             "time_embed.2": "time_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out"}


def _resnet(rest: str, names: dict) -> Optional[str]:
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def unet_name(key: str, layers: int) -> Optional[str]:
    """Our UNet name of LDM key `key` (prefix removed), for `layers` resnets per down block; None if unknown."""
    module, _, leaf = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    m = re.fullmatch(r"middle_block\.(\d+)\.(.+)", key)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        if k == 1:
            return f"mid_block.attentions.0.{rest}"
        part = _resnet(rest, _UNET_RESNET) if k in (0, 2) else None
        return f"mid_block.resnets.{k // 2}.{part}" if part else None
    m = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)", key)
    if not m:
        return None
    kind, k, slot, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    n = layers + 1
    if kind == "input_blocks":
        if k == 0:
            return None
        i, j = (k - 1) // n, (k - 1) % n
        if slot == 0 and rest.startswith("op."):
            return f"down_blocks.{k // n - 1}.downsamplers.0.conv.{rest[3:]}" if k % n == 0 else None
        if slot == 0:
            part = _resnet(rest, _UNET_RESNET)
            return f"down_blocks.{i}.resnets.{j}.{part}" if part else None
        return f"down_blocks.{i}.attentions.{j}.{rest}" if slot == 1 else None
    i, j = k // n, k % n
    if rest.startswith("conv.") and slot in (1, 2):  # the upsampler follows the last resnet (and attention)
        return f"up_blocks.{i}.upsamplers.0.{rest}" if j == layers else None
    if slot == 0:
        part = _resnet(rest, _UNET_RESNET)
        return f"up_blocks.{i}.resnets.{j}.{part}" if part else None
    return f"up_blocks.{i}.attentions.{j}.{rest}" if slot == 1 else None


_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def vae_name(key: str, levels: int) -> Optional[tuple]:
    """(our VAE name, whether a 1x1 conv is read as a Linear weight) of LDM key `key` (prefix removed) for a VAE of `levels` levels."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return None
    coder, rest = m.groups()
    module, _, leaf = rest.rpartition(".")
    resnet = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
    if module in ("conv_in", "conv_out"):
        return f"{coder}.{rest}", False
    if module == "norm_out":
        return f"{coder}.conv_norm_out.{leaf}", False
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)\.(\w+)|downsample\.conv|upsample\.conv)", module)
    if m:
        i = int(m.group(2)) if m.group(1) == "down" else levels - 1 - int(m.group(2))
        blocks = "down_blocks" if m.group(1) == "down" else "up_blocks"
        if m.group(4) is not None:
            part = resnet.get(m.group(5))
            return (f"{coder}.{blocks}.{i}.resnets.{m.group(4)}.{part}.{leaf}", False) if part else None
        sampler = "downsamplers" if m.group(1) == "down" else "upsamplers"
        return f"{coder}.{blocks}.{i}.{sampler}.0.conv.{leaf}", False
    m = re.fullmatch(r"mid\.block_(\d)\.(\w+)", module)
    if m and m.group(2) in resnet:
        return f"{coder}.mid_block.resnets.{int(m.group(1)) - 1}.{resnet[m.group(2)]}.{leaf}", False
    m = re.fullmatch(r"mid\.attn_1\.(\w+)", module)
    if m and m.group(1) in _VAE_ATTENTION:
        return f"{coder}.mid_block.attentions.0.{_VAE_ATTENTION[m.group(1)]}.{leaf}", leaf == "weight"
    return None


_OPENCLIP_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                 "positional_embedding": "text_model.embeddings.position_embedding.weight",
                 "ln_final.weight": "text_model.final_layer_norm.weight",
                 "ln_final.bias": "text_model.final_layer_norm.bias"}
_OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}


def openclip_names(key: str, layers: int):
    """[(our name, part)] of OpenCLIP key `key` (prefix removed); [] for keys SD does not use (the layers from
    `layers` on: SD 2.x conditions on the penultimate layer's output); None if unknown."""
    if key in _OPENCLIP_TOP:
        return [(_OPENCLIP_TOP[key], None)]
    if key in _OPENCLIP_UNUSED:
        return []
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(\w+)", key)
    if not m:
        return None
    n, module, leaf = int(m.group(1)), m.group(2), m.group(3)
    if n >= layers:
        return []
    layer = f"text_model.encoder.layers.{n}"
    if module == "attn" and leaf in ("in_proj_weight", "in_proj_bias"):
        kind = leaf.split("_")[-1]
        return [(f"{layer}.self_attn.{proj}_proj.{kind}", part) for part, proj in enumerate("qkv")]
    return [(f"{layer}.{_OPENCLIP_LAYER[module]}.{leaf}", None)] if module in _OPENCLIP_LAYER else None


def ldm_names(component: str, keys, config: dict, ema: bool = False):
    """({our name: Source}, [stored keys of the component we cannot place]) for `component` of a file
    holding `keys`, built as `config` (our module's config.json dict) describes. `ema`: the UNet is read
    from its `model_ema.` twins."""
    from common.sd.configs import text_encoder_key  # the SD 1.x text encoder is transformers' own layout
    names, unknown = {}, []
    if component == "text_encoder":
        layout = text_layout(keys)
        prefix = OPENCLIP_PREFIX if layout == "openclip" else CLIP_PREFIX
        for key in (k for k in keys if k.startswith(prefix)):
            rest = key[len(prefix):]
            if layout == "clip":
                names[text_encoder_key(rest)] = Source(key)
                continue
            placed = openclip_names(rest, config.get("num_hidden_layers", 12))
            if placed is None:
                unknown.append(key)
            for name, part in placed or ():
                names[name] = Source(key, part)
        return names, unknown
    prefix = PREFIXES[component]
    for key in (k for k in keys if k.startswith(prefix)):
        rest = key[len(prefix):]
        if component == "unet":
            name, flatten = unet_name(rest, config.get("layers_per_block", 2)), False
        else:
            name, flatten = vae_name(rest, len(config.get("block_out_channels", [64]))) or (None, False)
        if name is None:
            unknown.append(key)
        else:
            names[name] = Source(ema_key(key) if ema else key, flatten=flatten)
    return names, unknown


# ---- what the file does not say ------------------------------------------------------------------------------

class Inferred(NamedTuple):
    unet: dict
    vae: dict
    text_encoder: dict


def _count(keys, pattern: str) -> int:
    """1 + the largest index the regex group of `pattern` takes over `keys` (0 if none)."""
    found = [int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m]
    return max(found) + 1 if found else 0


def infer_configs(shapes: dict, prediction: str, image_size: int) -> Inferred:
    """Our module configs for the file whose stored {key: shape} is `shapes`, by SD's LDM configs' rules:
    widths, levels, block types and layer counts from the shapes; heads from the head width (64, as SD 2.x's
    `num_head_channels`) or, for SD 1.x's 1x1-conv projections, 8 per block; 32 norm groups; attention
    upcast for SD 2.x's v-prediction model, as its folder's config. ValueError naming what is missing."""
    def shape(key):
        if key not in shapes:
            raise ValueError(f"no {key} tensor, so this is not a Stable Diffusion 1.x/2.x single-file checkpoint")
        return shapes[key]

    u = UNET_PREFIX
    channels0, in_channels = shape(f"{u}input_blocks.0.0.weight")[:2]
    inputs = _count(shapes, re.escape(u) + r"input_blocks\.(\d+)\.")
    ops = sorted(int(m.group(1)) for k in shapes for m in [re.fullmatch(re.escape(u) + r"input_blocks\.(\d+)\.0\.op\.weight", k)] if m)
    layers = ops[0] - 1 if ops else inputs - 1
    levels = inputs // (layers + 1)
    chans = [shape(f"{u}input_blocks.{1 + i * (layers + 1)}.0.out_layers.3.weight")[0] for i in range(levels)]
    attn = [f"{u}input_blocks.{1 + i * (layers + 1)}.1.proj_in.weight" in shapes for i in range(levels)]
    up_attn = [f"{u}output_blocks.{i * (layers + 1)}.1.proj_in.weight" in shapes for i in range(levels)]
    first = next((i for i, a in enumerate(attn) if a), None)
    if first is None:
        raise ValueError("the UNet has no attention blocks; not a Stable Diffusion 1.x/2.x checkpoint")
    block = f"{u}input_blocks.{1 + first * (layers + 1)}.1"
    linear = len(shape(f"{block}.proj_in.weight")) == 2
    heads = [max(c // HEAD_WIDTH, 1) if linear else SD1_UNET_HEADS for c in chans]
    unet = {"_class_name": "UNet2DConditionModel", "sample_size": image_size // 8, "in_channels": in_channels,
            "out_channels": shape(f"{u}out.2.weight")[0], "block_out_channels": chans, "layers_per_block": layers,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
            "attention_head_dim": heads, "cross_attention_dim": shape(f"{block}.transformer_blocks.0.attn2.to_k.weight")[1],
            "use_linear_projection": linear, "upcast_attention": linear and prediction == "v_prediction",
            "norm_num_groups": GROUPS}
    v = VAE_PREFIX
    vae_levels = _count(shapes, re.escape(v) + r"encoder\.down\.(\d+)\.")
    vae = {"_class_name": "AutoencoderKL", "sample_size": image_size,
           "in_channels": shape(f"{v}encoder.conv_in.weight")[1], "out_channels": shape(f"{v}decoder.conv_out.weight")[0],
           "block_out_channels": [shape(f"{v}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(vae_levels)],
           "down_block_types": ["DownEncoderBlock2D"] * vae_levels, "up_block_types": ["UpDecoderBlock2D"] * vae_levels,
           "layers_per_block": _count(shapes, re.escape(v) + r"encoder\.down\.0\.block\.(\d+)\."),
           "latent_channels": shape(f"{v}post_quant_conv.weight")[0], "norm_num_groups": GROUPS,
           "scaling_factor": 0.18215}
    layout = text_layout(shapes)
    if layout == "openclip":
        t = OPENCLIP_PREFIX
        vocab, width = shape(f"{t}token_embedding.weight")
        text = {"num_hidden_layers": _count(shapes, re.escape(t) + r"transformer\.resblocks\.(\d+)\.") - 1,
                "max_position_embeddings": shape(f"{t}positional_embedding")[0],
                "intermediate_size": shape(f"{t}transformer.resblocks.0.mlp.c_fc.weight")[0], "hidden_act": "gelu"}
    elif layout == "clip":
        t = CLIP_PREFIX + ("text_model." if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in shapes else "")
        vocab, width = shape(f"{t}embeddings.token_embedding.weight")
        text = {"num_hidden_layers": _count(shapes, re.escape(t) + r"encoder\.layers\.(\d+)\."),
                "max_position_embeddings": shape(f"{t}embeddings.position_embedding.weight")[0],
                "intermediate_size": shape(f"{t}encoder.layers.0.mlp.fc1.weight")[0], "hidden_act": "quick_gelu"}
    else:
        raise ValueError(f"no text encoder ({OPENCLIP_PREFIX}* or {CLIP_PREFIX}* keys); not a Stable Diffusion "
                         "1.x/2.x single-file checkpoint")
    text.update({"architectures": ["CLIPTextModel"], "vocab_size": vocab, "hidden_size": width,
                 "num_attention_heads": max(width // HEAD_WIDTH, 1), "layer_norm_eps": 1e-5})
    return Inferred(unet, vae, text)


def default_prediction(keys) -> str:
    """diffusers' `from_single_file` inference: SD 2.x (OpenCLIP) files are read with the v-prediction
    config (the 768 model), SD 1.x with epsilon; SD 2.x's 512 base model needs `model.prediction: epsilon`."""
    return "v_prediction" if text_layout(keys) == "openclip" else "epsilon"


def scheduler_config(prediction: str) -> dict:
    """SD's training noise schedule (LDM configs' linear_start/linear_end), as diffusers' `from_single_file`
    builds its DDIM scheduler."""
    return {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False,
            "prediction_type": prediction}
