"""AutoencoderKL (diffusers) in Jittor: image <-> latent for SD 2.x.

Attribute names equal diffusers' state-dict keys (`encoder.down_blocks.0.resnets.0.conv1.weight`, ...).
All VAE GroupNorms use eps 1e-6; the encoder downsamples with an asymmetric pad and padding 0. The layout
is declared once, in common/sd/architecture.py (`vae`); the classes here are the forward passes.
"""

import numpy as np

from common.sd import architecture
from common.sd.attention import attention
from common.sd.configs import vae_key
from common.sd.layers import Declared, silu


class VAEAttention(Declared):
    """The mid block's single-head self-attention over pixels: GN, q/k/v, fp32 softmax, out, residual."""

    def execute(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(0, 2, 1)
        out = attention(self.to_q(t), self.to_k(t), self.to_v(t), heads=1, scale=self.scale, upcast=True)
        return self.to_out[0](out).transpose(0, 2, 1).reshape(b, c, h, w) + x


class MidBlock(Declared):
    def execute(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownEncoderBlock2D(Declared):
    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpDecoderBlock2D(Declared):
    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(Declared):
    def execute(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(Declared):
    def execute(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(silu(self.conv_norm_out(x)))


class AutoencoderKL(Declared):
    """`encode(x)` -> (mean, logvar) of the latent posterior; `decode(z)` -> image in [-1, 1].

    Latents fed to the UNet are `scaling_factor * z`; divide by it before `decode`.
    """

    def __init__(self, config: dict):
        super().__init__(architecture.vae(config))

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
