"""OpenAI CLIP with the ModifiedResNet image tower, as piq builds it for CLIP-IQA, in Jittor (docs/score.md).

Names are the archive's state-dict keys (`visual.layer1.0.conv1.weight`, `transformer.resblocks.0.attn.
in_proj_weight`, ...); sizes come from the tensors' shapes as piq's `build_model` infers them. piq casts
the convolution, linear, attention and text-projection weights to float16 and back, so those are rounded
to float16 on loading (`fp16_rounded`); the network then runs in float32.
"""
import re

import numpy as np

from common.jittor_env import load_jittor
from common.score.inception import BatchNorm2d

jt = load_jittor()
nn = jt.nn

_ROUNDED = re.compile(r".*(conv\d\.weight|downsample\.0\.weight|_proj\.(weight|bias)|c_fc\.(weight|bias)|"
                      r"c_proj\.(weight|bias)|in_proj_(weight|bias)|out_proj\.(weight|bias))$|text_projection$")


def fp16_rounded(name: str, array: np.ndarray) -> np.ndarray:
    """The value piq's model holds: float16-rounded for the weights its `convert_weights` halves."""
    array = np.asarray(array, np.float32)
    return array.astype(np.float16).astype(np.float32) if _ROUNDED.match(name) else array


def conv_bn(cin: int, cout: int, kernel: int, padding: int = 0, stride: int = 1):
    return (nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False), BatchNorm2d(cout, eps=1e-5))


class Downsample(nn.Module):
    """`downsample.-1` (average pool), `.0` (1x1 conv), `.1` (BatchNorm): the checkpoint's names."""

    def __init__(self, cin: int, cout: int, stride: int):
        self.pool = nn.AvgPool2d(stride) if stride > 1 else None
        setattr(self, "0", nn.Conv2d(cin, cout, 1, bias=False))
        setattr(self, "1", BatchNorm2d(cout, eps=1e-5))

    def execute(self, x):
        if self.pool is not None:
            x = self.pool(x)
        return getattr(self, "1")(getattr(self, "0")(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else None
        self.conv1, self.bn1 = conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, padding=1)
        self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
        self.downsample = Downsample(cin, planes * 4, stride) if stride > 1 or cin != planes * 4 else None

    def execute(self, x):
        out = nn.relu(self.bn1(self.conv1(x)))
        out = nn.relu(self.bn2(self.conv2(out)))
        if self.avgpool is not None:
            out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        return nn.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _attention(q, k, v, heads: int, mask=None):
    """Multi-head attention of (B, Nq, C) queries over (B, N, C) keys and values."""
    b, nq, c = q.shape
    n, d = k.shape[1], c // heads
    q = q.reshape((b, nq, heads, d)).transpose((0, 2, 1, 3))
    k = k.reshape((b, n, heads, d)).transpose((0, 2, 1, 3))
    v = v.reshape((b, n, heads, d)).transpose((0, 2, 1, 3))
    logits = jt.matmul(q * (d ** -0.5), k.transpose((0, 1, 3, 2)))
    if mask is not None:
        logits = logits + mask
    return jt.matmul(nn.softmax(logits, dim=-1), v).transpose((0, 2, 1, 3)).reshape((b, nq, c))


class AttentionPool2d(nn.Module):
    """CLIP's attention pool, as CLIP-IQA calls it (`pos_embedding=False`): the spatial mean as the query
    over [mean, HW tokens], no positional embedding (so any image size works); token 0 is the output."""

    def __init__(self, spacial: int, dim: int, heads: int, out: int):
        self.heads = heads
        self.positional_embedding = jt.zeros((spacial ** 2 + 1, dim), "float32")  # loaded, unused here
        self.k_proj, self.q_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out)

    def execute(self, x):
        b, c = x.shape[:2]
        tokens = x.reshape((b, c, -1)).transpose((0, 2, 1))  # (B, HW, C)
        tokens = jt.concat([tokens.mean(dim=1, keepdims=True), tokens], dim=1)
        pooled = _attention(self.q_proj(tokens[:, :1]), self.k_proj(tokens), self.v_proj(tokens), self.heads)
        return self.c_proj(pooled[:, 0])


class ModifiedResNet(nn.Module):
    def __init__(self, layers, width: int, heads: int, out: int, resolution: int):
        self.conv1, self.bn1 = conv_bn(3, width // 2, 3, padding=1, stride=2)
        self.conv2, self.bn2 = conv_bn(width // 2, width // 2, 3, padding=1)
        self.conv3, self.bn3 = conv_bn(width // 2, width, 3, padding=1)
        self.avgpool = nn.AvgPool2d(2)
        cin = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            first = Bottleneck(cin, planes, stride)
            setattr(self, f"layer{i + 1}", nn.Sequential(first, *[Bottleneck(planes * 4, planes, 1)
                                                                   for _ in range(blocks - 1)]))
            cin = planes * 4
        self.attnpool = AttentionPool2d(resolution // 32, width * 32, heads, out)

    def execute(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = nn.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class MultiheadAttention(nn.Module):
    """torch's nn.MultiheadAttention names: a fused `in_proj_weight`/`in_proj_bias`, and `out_proj`."""

    def __init__(self, dim: int, heads: int):
        self.heads = heads
        self.in_proj_weight = jt.zeros((3 * dim, dim), "float32")
        self.in_proj_bias = jt.zeros((3 * dim,), "float32")
        self.out_proj = nn.Linear(dim, dim)

    def execute(self, x, mask):
        qkv = jt.matmul(x, self.in_proj_weight.transpose()) + self.in_proj_bias
        c = qkv.shape[-1] // 3
        q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
        return self.out_proj(_attention(q, k, v, self.heads, mask))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        self.c_fc, self.c_proj = nn.Linear(dim, dim * 4), nn.Linear(dim * 4, dim)

    def execute(self, x):
        x = self.c_fc(x)
        return self.c_proj(x * jt.sigmoid(1.702 * x))  # QuickGELU


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        self.attn = MultiheadAttention(dim, heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def execute(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int):
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(dim, heads) for _ in range(layers)])

    def execute(self, x, mask):
        for block in self.resblocks:
            x = block(x, mask)
        return x


def sizes(shapes: dict) -> dict:
    """piq's build_model: the ResNet CLIP's sizes from its state dict's shapes ({key: shape})."""
    layers = tuple(len({k.split(".")[2] for k in shapes if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
    grid = round((shapes["visual.attnpool.positional_embedding"][0] - 1) ** 0.5)
    width = shapes["ln_final.weight"][0]
    vision_width = shapes["visual.layer1.0.conv1.weight"][0]
    return {"layers": layers, "vision_width": vision_width, "vision_heads": vision_width * 32 // 64,
            "embed_dim": shapes["text_projection"][1], "resolution": grid * 32,
            "context": shapes["positional_embedding"][0], "vocab": shapes["token_embedding.weight"][0],
            "width": width, "heads": width // 64,
            "text_layers": len({k.split(".")[2] for k in shapes if k.startswith("transformer.resblocks.")})}


class CLIP(nn.Module):
    def __init__(self, s: dict):
        self.visual = ModifiedResNet(s["layers"], s["vision_width"], s["vision_heads"], s["embed_dim"],
                                     s["resolution"])
        self.transformer = Transformer(s["width"], s["text_layers"], s["heads"])
        self.token_embedding = nn.Embedding(s["vocab"], s["width"])
        self.positional_embedding = jt.zeros((s["context"], s["width"]), "float32")
        self.ln_final = nn.LayerNorm(s["width"])
        self.text_projection = jt.zeros((s["width"], s["embed_dim"]), "float32")
        self.causal = np.triu(np.full((s["context"], s["context"]), -np.inf, np.float32), 1)  # not a weight

    def encode_image(self, x):
        return self.visual(x)

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """(B, context) token ids -> (B, embed_dim), pooled at each row's largest id (the end token)."""
        x = self.token_embedding(jt.array(ids.astype(np.int32))) + self.positional_embedding
        x = self.ln_final(self.transformer(x, jt.array(self.causal))).numpy()
        return x[np.arange(len(ids)), ids.argmax(axis=-1)] @ self.text_projection.numpy()
