"""The SD 1.x / 2.x UNet, VAE and CLIP text encoder, declared once: Jittor-free.

A declaration is a tree: each `Block` names the module class that runs it, its children by attribute name
(a `Layer`: a Linear, conv, norm or embedding with its parameters' shapes; a sub-block; a list, i.e. a
ModuleList; None) and the settings its forward pass reads. `common.sd.layers.build` makes the Jittor
modules from it; `declared_shapes` reads the parameter names and shapes off it without Jittor, for the launch check
(common/model_check.py, docs/inputs.md §3). A config the modules cannot build is refused here, in one
ValueError, for both. Names are diffusers' / transformers' state-dict keys.
"""
from typing import Dict, NamedTuple, Tuple

from common.sd.configs import _positive_int, text_config, unet_config, vae_config

Shapes = Dict[str, Tuple[int, ...]]
VAE_EPS = 1e-6  # every VAE GroupNorm


class Layer(NamedTuple):
    kind: str     # the Jittor layer (common.sd.layers.LAYERS)
    args: tuple   # its constructor's arguments
    params: dict  # {parameter: shape}


class Block(NamedTuple):
    kind: str       # the module class that runs it (a common.sd.layers.Declared)
    children: dict  # attribute -> Layer, Block, list of them, or None
    settings: dict  # attribute -> value its forward pass reads


def block(kind: str, children: dict, **settings) -> Block:
    return Block(kind, children, settings)


def declared_shapes(node, prefix: str = "") -> Shapes:
    """{parameter: shape} of a declaration, named as the built module's state_dict() names them."""
    if isinstance(node, Layer):
        return {prefix + name: shape for name, shape in node.params.items()}
    out = {}
    for name, child in enumerate(node) if isinstance(node, list) else node.children.items():
        if child is not None:
            out.update(declared_shapes(child, f"{prefix}{name}."))
    return out


# -- layers ---------------------------------------------------------------------------------------------------
def linear(n_in, n_out, bias=True) -> Layer:
    return Layer("Linear", (n_in, n_out, bias), {"weight": (n_out, n_in), **({"bias": (n_out,)} if bias else {})})


def conv(n_in, n_out, kernel, stride=1, padding=0) -> Layer:
    return Layer("Conv2d", (n_in, n_out, kernel, stride, padding),
                 {"weight": (n_out, n_in, kernel, kernel), "bias": (n_out,)})


def group_norm(groups, channels, eps) -> Layer:
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into norm_num_groups={groups} groups")
    return Layer("GroupNorm", (groups, channels, eps), {"weight": (channels,), "bias": (channels,)})


def layer_norm(dim, eps=1e-5) -> Layer:
    return Layer("LayerNorm", (dim, eps), {"weight": (dim,), "bias": (dim,)})


def embedding(n, dim) -> Layer:
    return Layer("Embedding", (n, dim), {"weight": (n, dim)})


DROPOUT = Layer("Dropout", (0.0,), {})  # inference-time identity, kept so list indices match the keys


def _ints(cfg: dict, *keys):
    for key in keys:
        values = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
        if not values or not all(_positive_int(v) for v in values):
            raise ValueError(f"{key}={cfg[key]!r} is not a positive integer (or a list of them)")


# -- shared by the UNet and the VAE ----------------------------------------------------------------------------
def resnet(n_in, n_out, temb, groups, eps) -> Block:
    """GN → SiLU → conv1 (+ time embedding) → GN → SiLU → conv2, plus a 1x1 conv shortcut across widths."""
    return block("ResnetBlock2D", {
        "norm1": group_norm(groups, n_in, eps), "conv1": conv(n_in, n_out, 3, padding=1),
        "time_emb_proj": linear(temb, n_out) if temb else None,
        "norm2": group_norm(groups, n_out, eps), "conv2": conv(n_out, n_out, 3, padding=1),
        "conv_shortcut": conv(n_in, n_out, 1) if n_in != n_out else None})


def downsample(channels, padding) -> Block:
    """3x3 stride-2 conv; padding 0 means the VAE's asymmetric pad."""
    return block("Downsample2D", {"conv": conv(channels, channels, 3, 2, padding)}, padding=padding)


def upsample(channels) -> Block:
    return block("Upsample2D", {"conv": conv(channels, channels, 3, padding=1)})


# -- UNet2DConditionModel ---------------------------------------------------------------------------------------
def attention(dim, context_dim=None, heads=8, dim_head=64, upcast=False) -> Block:
    """diffusers' Attention: q from `dim` wide tokens, k/v from `context_dim` wide ones (self-attention: dim)."""
    inner, context_dim = heads * dim_head, context_dim or dim
    return block("Attention", {
        "to_q": linear(dim, inner, False), "to_k": linear(context_dim, inner, False),
        "to_v": linear(context_dim, inner, False), "to_out": [linear(inner, dim), DROPOUT]},
        heads=heads, scale=dim_head ** -0.5, upcast=upcast)


def transformer(cfg: dict, channels, heads) -> Block:
    """Transformer2DModel: GN, proj_in (SD 2.x Linear, SD 1.x 1x1 conv), one BasicTransformerBlock, proj_out."""
    if channels % heads:
        raise ValueError(f"UNet config: {channels} channels do not split into attention_head_dim={heads} heads")
    dim_head, upcast, linear_projection = channels // heads, cfg["upcast_attention"], cfg["use_linear_projection"]
    project = linear(channels, channels) if linear_projection else conv(channels, channels, 1)
    geglu = block("GEGLU", {"proj": linear(channels, 8 * channels)}, dim_out=4 * channels)
    return block("Transformer2DModel", {
        "norm": group_norm(cfg["norm_num_groups"], channels, 1e-6), "proj_in": project,
        "transformer_blocks": [block("BasicTransformerBlock", {
            "norm1": layer_norm(channels), "attn1": attention(channels, None, heads, dim_head, upcast),
            "norm2": layer_norm(channels),
            "attn2": attention(channels, cfg["cross_attention_dim"], heads, dim_head, upcast),
            "norm3": layer_norm(channels),
            "ff": block("FeedForward", {"net": [geglu, DROPOUT, linear(4 * channels, channels)]})})],
        "proj_out": project}, linear=linear_projection)


def unet(config: dict) -> Block:
    """UNet2DConditionModel from `unet/config.json`'s dict; ValueError naming what we cannot build."""
    cfg = unet_config(config)
    _ints(cfg, "block_out_channels", "attention_head_dim", "in_channels", "out_channels", "norm_num_groups")
    channels = list(cfg["block_out_channels"])
    levels = len(channels)
    heads = cfg["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * levels
    if len(cfg["down_block_types"]) != levels or len(cfg["up_block_types"]) != levels or len(heads) != levels:
        raise ValueError("UNet config: down_block_types, up_block_types and attention_head_dim need one entry "
                         "per block_out_channels")
    groups, eps, n, temb = cfg["norm_num_groups"], cfg["norm_eps"], cfg["layers_per_block"], channels[0] * 4

    def res(n_in, n_out):
        return resnet(n_in, n_out, temb, groups, eps)

    down = []
    for i, kind in enumerate(cfg["down_block_types"]):
        n_in, n_out = channels[max(i - 1, 0)], channels[i]
        down.append(block("DownBlock", {
            "resnets": [res(n_in if j == 0 else n_out, n_out) for j in range(n)],
            "attentions": [transformer(cfg, n_out, heads[i])] * n if kind == "CrossAttnDownBlock2D" else None,
            "downsamplers": [downsample(n_out, 1)] if i < levels - 1 else None}))
    rev, rev_heads, up = channels[::-1], heads[::-1], []
    for i, kind in enumerate(cfg["up_block_types"]):
        n_skip, n_prev, n_out = rev[min(i + 1, levels - 1)], rev[max(i - 1, 0)], rev[i]
        up.append(block("UpBlock", {  # resnet j takes [h, skip]: the last one the level's input-side skip
            "resnets": [res((n_prev if j == 0 else n_out) + (n_skip if j == n else n_out), n_out)
                        for j in range(n + 1)],
            "attentions": [transformer(cfg, n_out, rev_heads[i])] * (n + 1) if kind == "CrossAttnUpBlock2D" else None,
            "upsamplers": [upsample(n_out)] if i < levels - 1 else None}))
    width = channels[-1]
    return block("UNet2DConditionModel", {
        "conv_in": conv(cfg["in_channels"], channels[0], 3, padding=1),
        "time_embedding": block("TimestepEmbedding",
                                {"linear_1": linear(channels[0], temb), "linear_2": linear(temb, temb)}),
        "down_blocks": down,
        "mid_block": block("UNetMidBlock2DCrossAttn", {
            "resnets": [res(width, width)] * 2,
            "attentions": [transformer(cfg, width, heads[-1])]}),
        "up_blocks": up,
        "conv_norm_out": group_norm(groups, channels[0], eps),
        "conv_out": conv(channels[0], cfg["out_channels"], 3, padding=1)},
        config=cfg, time_proj_dim=channels[0])


# -- AutoencoderKL ----------------------------------------------------------------------------------------------
def vae(config: dict) -> Block:
    """AutoencoderKL from `vae/config.json`'s dict; ValueError naming what we cannot build."""
    cfg = vae_config(config)
    _ints(cfg, "block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "in_channels",
          "out_channels")
    chans, groups, layers, latent = (cfg[k] for k in ("block_out_channels", "norm_num_groups",
                                                       "layers_per_block", "latent_channels"))

    def resnets(n_in, c, n):
        return [resnet(n_in if j == 0 else c, c, None, groups, VAE_EPS) for j in range(n)]

    def mid(c):
        attn = block("VAEAttention", {"group_norm": group_norm(groups, c, VAE_EPS), "to_q": linear(c, c),
                                      "to_k": linear(c, c), "to_v": linear(c, c), "to_out": [linear(c, c)]},
                     scale=c ** -0.5)
        return block("MidBlock", {"resnets": resnets(c, c, 2), "attentions": [attn]})

    rev, last = chans[::-1], len(chans) - 1
    encoder = block("Encoder", {
        "conv_in": conv(cfg["in_channels"], chans[0], 3, padding=1),
        "down_blocks": [block("DownEncoderBlock2D", {"resnets": resnets(chans[max(i - 1, 0)], c, layers),
                                                     "downsamplers": [downsample(c, 0)] if i < last else None})
                        for i, c in enumerate(chans)],
        "mid_block": mid(chans[-1]), "conv_norm_out": group_norm(groups, chans[-1], VAE_EPS),
        "conv_out": conv(chans[-1], 2 * latent, 3, padding=1)})
    decoder = block("Decoder", {
        "conv_in": conv(latent, rev[0], 3, padding=1), "mid_block": mid(rev[0]),
        "up_blocks": [block("UpDecoderBlock2D", {"resnets": resnets(rev[max(i - 1, 0)], c, layers + 1),
                                                 "upsamplers": [upsample(c)] if i < last else None})
                      for i, c in enumerate(rev)],
        "conv_norm_out": group_norm(groups, rev[-1], VAE_EPS),
        "conv_out": conv(rev[-1], cfg["out_channels"], 3, padding=1)})
    return block("AutoencoderKL", {
        "encoder": encoder, "decoder": decoder,
        "quant_conv": conv(2 * latent, 2 * latent, 1), "post_quant_conv": conv(latent, latent, 1)},
        config=cfg, scaling_factor=float(cfg["scaling_factor"]))


# -- CLIPTextModel (and the encoder the CLIP vision tower shares) -----------------------------------------------
def clip_encoder(cfg: dict, causal: bool = True) -> Block:
    """CLIP's pre-LayerNorm transformer layers; `causal` for text (token i sees tokens <= i), not for images."""
    dim, eps, heads = cfg["hidden_size"], cfg["layer_norm_eps"], cfg["num_attention_heads"]
    hidden = cfg["intermediate_size"]
    projections = {name: linear(dim, dim) for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
    layer = block("CLIPEncoderLayer", {
        "layer_norm1": layer_norm(dim, eps),
        "self_attn": block("CLIPAttention", projections, heads=heads, scale=(dim // heads) ** -0.5, causal=causal),
        "layer_norm2": layer_norm(dim, eps),
        "mlp": block("CLIPMLP", {"fc1": linear(dim, hidden), "fc2": linear(hidden, dim)}, act=cfg["hidden_act"])})
    return block("CLIPEncoder", {"layers": [layer] * cfg["num_hidden_layers"]})


def clip_text_transformer(cfg: dict) -> Block:
    """Embeddings, causal encoder, final LayerNorm, from a checked text config (`configs.text_config`)."""
    dim = cfg["hidden_size"]
    return block("CLIPTextTransformer", {
        "embeddings": block("CLIPTextEmbeddings", {
            "token_embedding": embedding(cfg["vocab_size"], dim),
            "position_embedding": embedding(cfg["max_position_embeddings"], dim)}),
        "encoder": clip_encoder(cfg), "final_layer_norm": layer_norm(dim, cfg["layer_norm_eps"])})


def text_encoder(config: dict) -> Block:
    """CLIPTextModel from `text_encoder/config.json`'s dict; ValueError naming what we cannot build."""
    cfg = text_config(config)
    _ints(cfg, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "max_position_embeddings")
    return block("CLIPTextModel", {"text_model": clip_text_transformer(cfg)}, config=cfg)


COMPONENTS = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
