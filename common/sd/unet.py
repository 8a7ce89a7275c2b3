"""The SD 1.x / 2.x UNet (diffusers' UNet2DConditionModel), sizes read from `unet/config.json`.

Attribute names are diffusers' state-dict keys. As in diffusers, `attention_head_dim` counts heads in both
families (SD 1.x: 8 at every level; SD 2.x: 5, 10, 20, 20) and head dim = channels / heads; diffusers
refuses `num_attention_heads`, and so do we. SD 1.x projects into and out of the transformer with 1x1
convs (`use_linear_projection` false, diffusers' default), SD 2.x with Linear layers. Every `Attention`
knows its diffusers path (`.name`) so StyleID can hook it. The layout is declared once, in
common/sd/architecture.py (`unet`); the classes here are the forward passes.
"""
import math

import numpy as np

from common.jittor_env import load_jittor
from common.sd import architecture
from common.sd.attention import Attention
from common.sd.layers import Declared, silu

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


class TimestepEmbedding(Declared):
    def execute(self, x):
        return self.linear_2(silu(self.linear_1(x)))


class GEGLU(Declared):
    """One projection to twice the width: first half the value, second half the gate (erf GELU)."""

    def execute(self, x):
        h = self.proj(x)
        return h[..., :self.dim_out] * nn.gelu(h[..., self.dim_out:])


class FeedForward(Declared):
    def execute(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(Declared):
    """Pre-LayerNorm residual self-attention, cross-attention, feed-forward."""

    def execute(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(Declared):
    """GN → proj_in → tokens → blocks → proj_out → image + input. SD 2.x projects tokens with Linear layers,
    SD 1.x the image with 1x1 convs (weights (C, C, 1, 1)), as `linear` says."""

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


class DownBlock(Declared):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D; returns (h, skips)."""

    def execute(self, h, temb, context):
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock(Declared):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet takes [h, newest skip]; upsample to the next skip's size."""

    def execute(self, h, skips, temb, context, upsample_size=None):
        for j, resnet in enumerate(self.resnets):
            h = resnet(jt.concat([h, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                h = self.attentions[j](h, context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


class UNetMidBlock2DCrossAttn(Declared):
    def execute(self, h, temb, context):
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class UNet2DConditionModel(Declared):
    def __init__(self, config: dict):
        super().__init__(architecture.unet(config))
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
