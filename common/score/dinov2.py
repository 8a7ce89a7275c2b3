"""DINOv2 (transformers' Dinov2Model) in Jittor: the image features of the score's dino_score.

Attribute names equal the checkpoint's keys (`embeddings.patch_embeddings.projection.weight`,
`encoder.layer.0.attention.attention.query.weight`, `layernorm.weight`...), sizes come from config.json.
A patch-embedding conv, the CLS token, position embeddings resized to the patch grid, pre-LN blocks whose
two branches are scaled by learned per-channel factors (layer scale), a final layernorm; `pooler_output`
is the layernormed CLS token. The position embeddings are trained for `image_size` (37 x 37 patches for
dinov2-base) and resized bicubically (torch's A = -0.75, align_corners False, edge indices clamped) to
the input's grid with an explicit output size, as transformers >= 4.45 does; the resize is linear, so it
runs as two small matrix products (`bicubic_matrix`).
"""
import math

import numpy as np

from common.jittor_env import load_jittor
from common.sd.attention import attention
from common.sd.layers import LayerNorm

jt = load_jittor()
nn = jt.nn

# transformers' Dinov2Config defaults, for keys a config.json may omit.
DINOV2_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                   "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 224, "patch_size": 14,
                   "num_channels": 3, "qkv_bias": True, "use_swiglu_ffn": False, "use_mask_token": True}
# Keys whose other values select parts we do not build; value = the one accepted.
DINOV2_FIXED = {"hidden_act": "gelu", "use_swiglu_ffn": False}


def dinov2_config(config: dict) -> dict:
    """The config with defaults filled in; ValueError naming the key when we cannot build it."""
    cfg = {**DINOV2_DEFAULTS, **config}
    for key, accepted in DINOV2_FIXED.items():
        if cfg[key] != accepted:
            raise ValueError(f"DINOv2 config: {key}={cfg[key]!r} is not supported (only {accepted!r})")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise ValueError(f"DINOv2 config: {key}={cfg[key]!r} is not a positive integer")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError("DINOv2 config: hidden_size must be divisible by num_attention_heads")
    return cfg


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 M with M @ x = torch's bicubic resize of x along one axis (align_corners False,
    A = -0.75, source indices clamped to the edges, no antialiasing)."""
    f = np.float32  # torch computes the source coordinates and the weights in float32
    a, scale = f(-0.75), f(n_in) / f(n_out)
    m = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        x = scale * (f(o) + f(0.5)) - f(0.5)
        i = math.floor(x)
        t = x - f(i)
        weights = (((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                   ((a + 2) * t - (a + 3)) * t * t + 1,
                   ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                   ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
        for k, w in enumerate(weights):
            m[o, min(max(i - 1 + k, 0), n_in - 1)] += w
    return m


class Dinov2PatchEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        p = cfg["patch_size"]
        self.projection = nn.Conv2d(cfg["num_channels"], cfg["hidden_size"], p, stride=p)

    def execute(self, pixels):
        x = self.projection(pixels)
        return x.reshape((x.shape[0], x.shape[1], -1)).transpose((0, 2, 1))


class Dinov2Embeddings(nn.Module):
    def __init__(self, cfg: dict):
        dim, self.patch_size = cfg["hidden_size"], cfg["patch_size"]
        self.grid = cfg["image_size"] // cfg["patch_size"]
        self.cls_token = jt.zeros((1, 1, dim), "float32")
        if cfg["use_mask_token"]:
            self.mask_token = jt.zeros((1, dim), "float32")  # pre-training only; kept so the file's key loads
        self.patch_embeddings = Dinov2PatchEmbeddings(cfg)
        self.position_embeddings = jt.zeros((1, self.grid * self.grid + 1, dim), "float32")

    def positions(self, rows: int, cols: int):
        """(1, 1 + rows*cols, D): the CLS position, then the patch positions resized to rows x cols."""
        if rows == cols == self.grid:
            return self.position_embeddings
        dim, g = self.position_embeddings.shape[2], self.grid
        grid = self.position_embeddings[0, 1:].reshape((g, g * dim))
        grid = jt.matmul(jt.array(bicubic_matrix(g, rows)), grid).reshape((rows, g, dim))  # along height
        grid = jt.matmul(jt.array(bicubic_matrix(g, cols)), grid.transpose((1, 0, 2)).reshape((g, rows * dim)))
        grid = grid.reshape((cols, rows, dim)).transpose((1, 0, 2)).reshape((1, rows * cols, dim))
        return jt.concat([self.position_embeddings[:, :1], grid], dim=1)

    def execute(self, pixels):
        b, _, h, w = pixels.shape
        patches = self.patch_embeddings(pixels)
        x = jt.concat([self.cls_token.broadcast((b, 1, self.cls_token.shape[2])), patches], dim=1)
        return x + self.positions(h // self.patch_size, w // self.patch_size)


class Dinov2SelfAttention(nn.Module):
    def __init__(self, cfg: dict):
        dim, bias = cfg["hidden_size"], cfg["qkv_bias"]
        self.heads, self.scale = cfg["num_attention_heads"], (dim // cfg["num_attention_heads"]) ** -0.5
        self.query, self.key = nn.Linear(dim, dim, bias=bias), nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)

    def execute(self, x):
        return attention(self.query(x), self.key(x), self.value(x), self.heads, self.scale, upcast=True)


class Dinov2SelfOutput(nn.Module):
    def __init__(self, cfg: dict):
        self.dense = nn.Linear(cfg["hidden_size"], cfg["hidden_size"])

    def execute(self, x):
        return self.dense(x)


class Dinov2Attention(nn.Module):
    def __init__(self, cfg: dict):
        self.attention = Dinov2SelfAttention(cfg)
        self.output = Dinov2SelfOutput(cfg)

    def execute(self, x):
        return self.output(self.attention(x))


class Dinov2LayerScale(nn.Module):
    def __init__(self, dim: int):
        self.lambda1 = jt.ones((dim,), "float32")

    def execute(self, x):
        return x * self.lambda1


class Dinov2MLP(nn.Module):
    def __init__(self, cfg: dict):
        dim = cfg["hidden_size"]
        hidden = int(dim * cfg["mlp_ratio"])
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def execute(self, x):
        return self.fc2(nn.gelu(self.fc1(x)))


class Dinov2Layer(nn.Module):
    def __init__(self, cfg: dict):
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.norm1, self.attention, self.layer_scale1 = LayerNorm(dim, eps), Dinov2Attention(cfg), Dinov2LayerScale(dim)
        self.norm2, self.mlp, self.layer_scale2 = LayerNorm(dim, eps), Dinov2MLP(cfg), Dinov2LayerScale(dim)

    def execute(self, x):
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Dinov2Encoder(nn.Module):
    def __init__(self, cfg: dict):
        self.layer = nn.ModuleList([Dinov2Layer(cfg) for _ in range(cfg["num_hidden_layers"])])

    def execute(self, x):
        for layer in self.layer:
            x = layer(x)
        return x


class Dinov2Model(nn.Module):
    """pixel values (B, 3, H, W) -> pooler_output (B, hidden_size): the layernormed CLS token."""

    def __init__(self, config: dict):
        cfg = dinov2_config(config)
        self.config = cfg
        self.embeddings = Dinov2Embeddings(cfg)
        self.encoder = Dinov2Encoder(cfg)
        self.layernorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])

    def execute(self, pixels):
        if not isinstance(pixels, jt.Var):
            pixels = jt.array(np.asarray(pixels, dtype=np.float32))
        x = self.encoder(self.embeddings(pixels))
        return self.layernorm(x[:, 0])
