"""AutoencoderKL (diffusers) in Jittor: image <-> latent for SD 2.x.

Attribute names equal diffusers' state-dict keys (`encoder.down_blocks.0.resnets.0.conv1.weight`, ...).
All VAE GroupNorms use eps 1e-6; the encoder downsamples with an asymmetric pad and padding 0.
"""

import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention import attention
from common.sd.configs import vae_config, vae_key
from common.sd.layers import Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D, silu

jt = load_jittor()
nn = jt.nn

EPS = 1e-6


class VAEAttention(nn.Module):
    """The mid block's single-head self-attention over pixels: GN, q/k/v, fp32 softmax, out, residual."""

    def __init__(self, channels: int, groups: int):
        self.group_norm = GroupNorm(groups, channels, EPS)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.scale = channels ** -0.5

    def execute(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(0, 2, 1)
        out = attention(self.to_q(t), self.to_k(t), self.to_v(t), heads=1, scale=self.scale, upcast=True)
        return self.to_out[0](out).transpose(0, 2, 1).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])

    def execute(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, downsample: bool):
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if j == 0 else out_ch, out_ch, None, groups, EPS)
                                      for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, padding=0)]) if downsample else None

    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, upsample: bool):
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if j == 0 else out_ch, out_ch, None, groups, EPS)
                                      for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if upsample else None

    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        chans, groups, layers = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(chans[max(i - 1, 0)], c, layers, groups, downsample=i < len(chans) - 1)
            for i, c in enumerate(chans)])
        self.mid_block = MidBlock(chans[-1], groups)
        self.conv_norm_out = GroupNorm(groups, chans[-1], EPS)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def execute(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: dict):
        chans, groups, layers = cfg["block_out_channels"][::-1], cfg["norm_num_groups"], cfg["layers_per_block"]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups)
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(chans[max(i - 1, 0)], c, layers + 1, groups, upsample=i < len(chans) - 1)
            for i, c in enumerate(chans)])
        self.conv_norm_out = GroupNorm(groups, chans[-1], EPS)
        self.conv_out = nn.Conv2d(chans[-1], cfg["out_channels"], 3, padding=1)

    def execute(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """`encode(x)` -> (mean, logvar) of the latent posterior; `decode(z)` -> image in [-1, 1].

    Latents fed to the UNet are `scaling_factor * z`; divide by it before `decode`.
    """

    def __init__(self, config: dict):
        cfg = vae_config(config)
        self.config = cfg
        self.scaling_factor = float(cfg["scaling_factor"])
        latent = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)

    def encode(self, x):
        moments = self.quant_conv(self.encoder(x))
        latent = self.config["latent_channels"]
        return moments[:, :latent], moments[:, latent:].clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def execute(self, x):
        """Reconstruct through the posterior mean."""
        return self.decode(self.encode(x)[0])


def rename_legacy_keys(state: dict) -> dict:
    """Map old diffusers VAE attention names (`query/key/value/proj_attn`) to `to_q/to_k/to_v/to_out.0`.

    Old files may also store those projections as 1x1 convs (C, C, 1, 1): they become Linear weights.
    Other keys pass through unchanged.
    """
    out = {}
    for key, value in state.items():
        new = vae_key(key)
        if new != key and key.endswith(".weight") and np.ndim(value) == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out
