"""Building blocks shared by the UNet and the VAE, named like diffusers' modules so keys match, and `build`,
which makes a module from its declaration (common/sd/architecture.py).

Norms compute in float32 with a two-pass variance: Jittor's own norms take E[x²] − E[x]², which loses
precision on large activations and runs in the input dtype (fp16 overflows).
"""

from common.jittor_env import load_jittor
from common.sd.architecture import Layer

jt = load_jittor()
nn = jt.nn
_DECLARED = {}  # Block.kind -> the Declared class that runs it


def silu(x):
    return x * jt.sigmoid(x)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm over (N, C, *spatial) with a two-pass fp32 variance."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = jt.ones((num_channels,), "float32")
        self.bias = jt.zeros((num_channels,), "float32")

    def execute(self, x):
        shape, dtype = x.shape, x.dtype
        n, g = shape[0], self.num_groups
        xg = x.float32().reshape((n, g, -1))
        mean = xg.mean(dim=2, keepdims=True)
        centred = xg - mean
        var = (centred * centred).mean(dim=2, keepdims=True)
        y = (centred / jt.sqrt(var + self.eps)).reshape((n, self.num_channels, -1))
        y = y * self.weight.float32().reshape((1, -1, 1)) + self.bias.float32().reshape((1, -1, 1))
        return y.reshape(shape).cast(dtype)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm over the last dimension with a two-pass fp32 variance."""

    def __init__(self, dim, eps=1e-5):
        self.eps = eps
        self.weight = jt.ones((dim,), "float32")
        self.bias = jt.zeros((dim,), "float32")

    def execute(self, x):
        dtype = x.dtype
        x = x.float32()
        centred = x - x.mean(dim=-1, keepdims=True)
        var = (centred * centred).mean(dim=-1, keepdims=True)
        y = centred / jt.sqrt(var + self.eps) * self.weight.float32() + self.bias.float32()
        return y.cast(dtype)


class Declared(nn.Module):
    """A module built from its declaration: each child by `build`, each setting an attribute. Subclasses
    add only the forward pass; a declaration names them by class name (`Block.kind`)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _DECLARED[cls.__name__] = cls

    def __init__(self, declaration):
        for name, value in declaration.settings.items():
            setattr(self, name, value)
        for name, child in declaration.children.items():
            setattr(self, name, build(child))


LAYERS = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "GroupNorm": GroupNorm, "LayerNorm": LayerNorm,
          "Embedding": nn.Embedding, "Dropout": nn.Dropout}


def build(node):
    """The Jittor module of a declaration (common/sd/architecture.py): a Layer, a Block, a list, or None."""
    if node is None:
        return None
    if isinstance(node, list):
        return nn.ModuleList([build(child) for child in node])
    if isinstance(node, Layer):
        return LAYERS[node.kind](*node.args)
    return _DECLARED[node.kind](node)


class ResnetBlock2D(Declared):
    """GN → SiLU → conv1 (+ time embedding) → GN → SiLU → conv2, plus a (1x1 conv) shortcut."""

    def execute(self, x, temb=None):
        h = self.conv1(silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(silu(temb))[:, :, None, None]
        h = self.conv2(silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(Declared):
    """3x3 stride-2 conv; padding 0 means the VAE's asymmetric pad (right and bottom by one)."""

    def execute(self, x):
        if self.padding == 0:
            x = nn.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def upsample_nearest(x, size=None):
    """Nearest-neighbour resize to `size` (default twice the input), source index floor(i·in/out) as torch."""
    n, c, h, w = x.shape
    oh, ow = size if size is not None else (2 * h, 2 * w)
    return x.reindex([n, c, oh, ow], ["i0", "i1", f"i2*{h}/{oh}", f"i3*{w}/{ow}"])


class Upsample2D(Declared):
    """Nearest x2 (or to the skip's size when latents are not divisible by 8), then a 3x3 conv."""

    def execute(self, x, size=None):
        return self.conv(upsample_nearest(x, size))
