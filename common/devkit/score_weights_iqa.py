"""Random-weight files for CLIP-IQA in the checker's formats: piq's CLIP RN50 and the CLIP tokenizer.

NumPy only (the golden script shares the weight rule). Weights are stored as float16, as OpenAI's
`RN50.pt` stores them. `write_clip_rn50` writes our reader's TorchScript layout (common/sd/torchscript.py:
the module tree and its parameter declarations, no methods); the golden script writes the same weights as a
real `torch.jit` archive.
"""
import zlib
from pathlib import Path

import numpy as np

from common.devkit.assets.clip_bpe import write_tokenizer_folder

SEED = 2026
VOCAB = 49408  # CLIP's BPE vocabulary, whose end token (the largest id) pools the text
SMALL = {"layers": (1, 1, 1, 1), "vision_width": 8, "embed_dim": 32, "grid": 2, "context": 77, "width": 64,
         "text_layers": 1}
RN50 = {"layers": (3, 4, 6, 3), "vision_width": 64, "embed_dim": 1024, "grid": 7, "context": 77, "width": 512,
        "text_layers": 12}


def _conv_bn(prefix: str, conv: str, bn: str, cin: int, cout: int, k: int) -> dict:
    shapes = {f"{prefix}{conv}.weight": (cout, cin, k, k)}
    shapes.update({f"{prefix}{bn}.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")})
    return shapes


def rn50_shapes(s: dict) -> dict:
    """{state-dict key: shape} of OpenAI's ResNet CLIP with sizes `s` (piq's build_model reads them back)."""
    w = s["vision_width"]
    shapes = {}
    for i, (cin, cout) in enumerate(((3, w // 2), (w // 2, w // 2), (w // 2, w))):
        shapes.update(_conv_bn("visual.", f"conv{i + 1}", f"bn{i + 1}", cin, cout, 3))
    cin = w
    for i, blocks in enumerate(s["layers"]):
        planes = w * 2 ** i
        for j in range(blocks):
            p = f"visual.layer{i + 1}.{j}."
            shapes.update(_conv_bn(p, "conv1", "bn1", cin, planes, 1))
            shapes.update(_conv_bn(p, "conv2", "bn2", planes, planes, 3))
            shapes.update(_conv_bn(p, "conv3", "bn3", planes, planes * 4, 1))
            if j == 0 and (i > 0 or cin != planes * 4):
                shapes.update(_conv_bn(p + "downsample.", "0", "1", cin, planes * 4, 1))
            cin = planes * 4
    dim = w * 32
    shapes["visual.attnpool.positional_embedding"] = (s["grid"] ** 2 + 1, dim)
    for proj in ("q_proj", "k_proj", "v_proj"):
        shapes.update({f"visual.attnpool.{proj}.weight": (dim, dim), f"visual.attnpool.{proj}.bias": (dim,)})
    shapes.update({"visual.attnpool.c_proj.weight": (s["embed_dim"], dim), "visual.attnpool.c_proj.bias":
                   (s["embed_dim"],)})
    d = s["width"]
    for b in range(s["text_layers"]):
        p = f"transformer.resblocks.{b}."
        shapes.update({p + "attn.in_proj_weight": (3 * d, d), p + "attn.in_proj_bias": (3 * d,),
                       p + "attn.out_proj.weight": (d, d), p + "attn.out_proj.bias": (d,),
                       p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                       p + "mlp.c_fc.weight": (4 * d, d), p + "mlp.c_fc.bias": (4 * d,),
                       p + "mlp.c_proj.weight": (d, 4 * d), p + "mlp.c_proj.bias": (d,)})
    shapes.update({"token_embedding.weight": (VOCAB, d), "positional_embedding": (s["context"], d),
                   "ln_final.weight": (d,), "ln_final.bias": (d,), "text_projection": (d, s["embed_dim"])})
    return shapes


def rn50_param(name: str, shape) -> np.ndarray:
    """The float16 value of `name`, seeded by the name: BatchNorm and LayerNorm near identity, weights
    N·√(1/fan_in), biases and embeddings small. The token embeddings are much smaller than the position
    embeddings, so the two anchors' features are close and the scores vary with the image instead of
    saturating at 0 or 1 (softmax of 100 x cosine)."""
    rng = np.random.default_rng((SEED ^ zlib.crc32(name.encode())) & 0xFFFFFFFF)
    x = rng.standard_normal(tuple(shape)).astype(np.float32)
    leaf = name.rsplit(".", 1)[-1]
    norm = ".bn" in name or "downsample.1." in name or ".ln_" in name or name.startswith("ln_final")
    if norm:
        value = {"weight": 1 + 0.1 * x, "bias": 0.1 * x, "running_mean": 0.1 * x,
                 "running_var": np.exp(0.2 * x)}[leaf]
    elif leaf.endswith("bias"):
        value = np.float32(0.1) * x
    elif name == "token_embedding.weight":  # "Good photo." and "Bad photo." nearly alike: scores near 0.4
        value = np.float32(0.0005) * x
    elif "embedding" in name:
        value = np.float32(0.02) * x
    else:
        value = x * np.float32(np.sqrt(1.0 / np.prod(shape[1:] if name != "text_projection" else shape[:1])))
    return value.astype(np.float16)


def rn50_state(small: bool = True) -> dict:
    return {name: rn50_param(name, shape) for name, shape in rn50_shapes(SMALL if small else RN50).items()}


def write_clip_rn50(path, small: bool = True) -> Path:
    from common.sd.torchscript import save_module_tree
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_module_tree(rn50_state(small), path)
    return path


def write_clip_tokenizer(folder) -> Path:
    """openai/clip-vit-base-patch16's tokenizer files (CLIP's BPE; the end token pads)."""
    return write_tokenizer_folder(folder, pad_token="<|endoftext|>")
