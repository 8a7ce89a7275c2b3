"""The SD 1.x / 2.x UNet (diffusers' UNet2DConditionModel), sizes read from `unet/config.json`.

Attribute names are diffusers' state-dict keys. As in diffusers, `attention_head_dim` counts heads in both
families (SD 1.x: 8 at every level; SD 2.x: 5, 10, 20, 20) and head dim = channels / heads; diffusers
refuses `num_attention_heads`, and so do we. SD 1.x projects into and out of the transformer with 1x1
convs (`use_linear_projection` false, diffusers' default), SD 2.x with Linear layers. Every `Attention`
knows its diffusers path (`.name`) so StyleID can hook it.
"""
import math

import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention import Attention
from common.sd.configs import unet_config
from common.sd.layers import Downsample2D, GroupNorm, LayerNorm, ResnetBlock2D, Upsample2D, silu

jt = load_jittor()
nn = jt.nn

def timestep_embedding(timesteps, batch, dim, flip_sin_to_cos, freq_shift):
    """Sinusoidal embedding (B, dim) in float32; `timesteps` an int or a (B,) Var or array."""
    if isinstance(timesteps, np.ndarray):
        timesteps = jt.array(timesteps)
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / (half - freq_shift))
    freqs = jt.array(freqs.astype(np.float32))
    t = jt.full((batch,), float(timesteps), "float32") if isinstance(timesteps, (int, float, np.integer)) \
        else timesteps.float32().reshape((-1,)).broadcast((batch,))
    angles = t[:, None] * freqs[None, :]
    sin, cos = jt.sin(angles), jt.cos(angles)
    return jt.concat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, time_embed_dim):
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def execute(self, x):
        return self.linear_2(silu(self.linear_1(x)))


class GEGLU(nn.Module):
    """One projection to twice the width: first half the value, second half the gate (erf GELU)."""

    def __init__(self, dim_in, dim_out):
        self.proj = nn.Linear(dim_in, 2 * dim_out)
        self.dim_out = dim_out

    def execute(self, x):
        h = self.proj(x)
        return h[..., :self.dim_out] * nn.gelu(h[..., self.dim_out:])


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def execute(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm residual self-attention, cross-attention, feed-forward."""

    def __init__(self, dim, heads, dim_head, cross_attention_dim, upcast):
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, dim_head, upcast)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim, heads, dim_head, upcast)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def execute(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GN → proj_in → tokens → blocks → proj_out → image + input. SD 2.x projects tokens with Linear layers,
    SD 1.x the image with 1x1 convs (weights (C, C, 1, 1)), as `linear` says."""

    def __init__(self, channels, heads, cross_attention_dim, groups, upcast, linear):
        if channels % heads:
            raise ValueError(f"UNet config: {channels} channels do not split into attention_head_dim={heads} heads")
        self.linear = linear
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, upcast)])
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def execute(self, x, context):
        b, c, h, w = x.shape
        hidden = self.norm(x)
        if not self.linear:  # SD 1.x: 1x1 convs on the image, before tokens and after
            hidden = self.proj_in(hidden)
        tokens = hidden.transpose((0, 2, 3, 1)).reshape((b, h * w, c))
        if self.linear:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.linear:
            tokens = self.proj_out(tokens)
        hidden = tokens.reshape((b, h, w, c)).transpose((0, 3, 1, 2))
        return (hidden if self.linear else self.proj_out(hidden)) + x


def transformer(cfg, channels, heads) -> Transformer2DModel:
    """The Transformer2DModel of a `channels`-wide level, as the UNet config says."""
    return Transformer2DModel(channels, heads, cfg["cross_attention_dim"], cfg["norm_num_groups"],
                              cfg["upcast_attention"], cfg["use_linear_projection"])


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D; returns (h, skips)."""

    def __init__(self, cfg, in_ch, out_ch, heads, temb, add_downsample, cross_attention):
        groups, eps, n = cfg["norm_num_groups"], cfg["norm_eps"], cfg["layers_per_block"]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if j == 0 else out_ch, out_ch, temb, groups, eps) for j in range(n)])
        if cross_attention:
            self.attentions = nn.ModuleList([transformer(cfg, out_ch, heads) for _ in range(n)])
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(out_ch, padding=1)])

    def execute(self, h, temb, context):
        skips = []
        attentions = getattr(self, "attentions", None)
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if attentions is not None:
                h = attentions[j](h, context)
            skips.append(h)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet takes [h, newest skip]; upsample to the next skip's size."""

    def __init__(self, cfg, in_ch, prev_ch, out_ch, heads, temb, add_upsample, cross_attention):
        groups, eps, n = cfg["norm_num_groups"], cfg["norm_eps"], cfg["layers_per_block"] + 1
        self.resnets = nn.ModuleList([
            ResnetBlock2D((prev_ch if j == 0 else out_ch) + (in_ch if j == n - 1 else out_ch), out_ch, temb,
                          groups, eps) for j in range(n)])
        if cross_attention:
            self.attentions = nn.ModuleList([transformer(cfg, out_ch, heads) for _ in range(n)])
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_ch)])

    def execute(self, h, skips, temb, context, upsample_size=None):
        attentions = getattr(self, "attentions", None)
        for j, resnet in enumerate(self.resnets):
            h = resnet(jt.concat([h, skips.pop()], dim=1), temb)
            if attentions is not None:
                h = attentions[j](h, context)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h, upsample_size)
        return h


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, cfg, channels, heads, temb):
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, temb, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([transformer(cfg, channels, heads)])

    def execute(self, h, temb, context):
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: dict):
        config = unet_config(config)
        self.config = config
        channels = list(config["block_out_channels"])
        levels = len(channels)
        heads = config["attention_head_dim"]
        heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * levels
        if len(config["down_block_types"]) != levels or len(config["up_block_types"]) != levels:
            raise ValueError("UNet config: down_block_types/up_block_types must have one entry per block_out_channels")
        temb = channels[0] * 4
        self.time_proj_dim = channels[0]

        self.conv_in = nn.Conv2d(config["in_channels"], channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        self.down_blocks = nn.ModuleList([
            DownBlock(config, channels[max(i - 1, 0)], channels[i], heads[i], temb, i < levels - 1,
                      config["down_block_types"][i] == "CrossAttnDownBlock2D") for i in range(levels)])
        self.mid_block = UNetMidBlock2DCrossAttn(config, channels[-1], heads[-1], temb)
        rev, rev_heads = channels[::-1], heads[::-1]
        self.up_blocks = nn.ModuleList([
            UpBlock(config, rev[min(i + 1, levels - 1)], rev[max(i - 1, 0)], rev[i], rev_heads[i], temb,
                    i < levels - 1, config["up_block_types"][i] == "CrossAttnUpBlock2D") for i in range(levels)])
        self.conv_norm_out = GroupNorm(config["norm_num_groups"], channels[0], config["norm_eps"])
        self.conv_out = nn.Conv2d(channels[0], config["out_channels"], 3, padding=1)
        for name, module in self.named_modules():
            if isinstance(module, Attention):
                module.name = name

    def attention_layers(self) -> dict:
        """{diffusers path: Attention}, e.g. `up_blocks.3.attentions.2.transformer_blocks.0.attn1`."""
        return {m.name: m for m in self.modules() if isinstance(m, Attention)}

    def set_processors(self, mapping: dict):
        """Install processors by attention name; an unknown name raises before anything changes."""
        layers = self.attention_layers()
        unknown = sorted(set(mapping) - set(layers))
        if unknown:
            raise KeyError(f"UNet has no attention layer(s) {unknown[:3]}; names look like {next(iter(layers))}")
        for name, processor in mapping.items():
            layers[name].processor = processor

    def execute(self, sample, timestep, encoder_hidden_states):
        cfg = self.config
        dtype = self.conv_in.weight.dtype
        t = timestep_embedding(timestep, sample.shape[0], self.time_proj_dim, cfg.get("flip_sin_to_cos", True),
                               cfg.get("freq_shift", 0))
        temb = self.time_embedding(t.cast(dtype))
        context = encoder_hidden_states.cast(dtype)

        h = self.conv_in(sample.cast(dtype))
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context)
            skips += block_skips
        h = self.mid_block(h, temb, context)
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            h = block(h, block_skips, temb, context, tuple(skips[-1].shape[2:]) if skips else None)
        return self.conv_out(silu(self.conv_norm_out(h)))
