"""The component configs the engine builds, and the weight-key layouts it reads: Jittor-free.

Each module (UNet, VAE, text encoder) builds from `*_config(config.json's dict)`, which fills in the
defaults diffusers/transformers use for omitted keys and refuses, in one line, every value that would
select an architecture we do not implement. common/sd/architecture.py declares the modules from them, and
the launcher's check (common/model_check.py) reads that same declaration.
"""
import re

# -- UNet2DConditionModel (SD 1.x and 2.x) ------------------------------------------------------------------
UNET_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
# Keys whose non-default values select architectures we do not build; value = the only one accepted.
UNET_FIXED = {
    "mid_block_type": "UNetMidBlock2DCrossAttn", "act_fn": "silu",
    "class_embed_type": None, "addition_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "time_cond_proj_dim": None, "time_embedding_type": "positional",
    "time_embedding_act_fn": None, "time_embedding_dim": None, "timestep_post_act": None,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "only_cross_attention": False, "dual_cross_attention": False, "center_input_sample": False,
    "cross_attention_norm": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "num_attention_heads": None,
    "attention_type": "default", "downsample_padding": 1, "mid_block_scale_factor": 1,
    "class_embeddings_concat": False, "dropout": 0.0,
}
# diffusers' defaults for the keys we read, for configs that omit them (SD 1.x's omit upcast_attention and
# use_linear_projection).
UNET_DEFAULTS = {
    "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1280, "attention_head_dim": 8, "use_linear_projection": False,
    "upcast_attention": False,
}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def unet_config(config: dict) -> dict:
    """The UNet config with defaults filled in; ValueError naming the key when we cannot build it."""
    cfg = {**UNET_DEFAULTS, **config}
    for key, accepted in UNET_FIXED.items():
        value = cfg.get(key, accepted)
        values = value if isinstance(value, (list, tuple)) and not isinstance(accepted, (list, tuple)) else [value]
        if any(v != accepted for v in values):
            raise ValueError(f"UNet config: {key}={value!r} is not supported (SD 1.x/2.x UNets need {accepted!r})")
    for key, allowed in (("down_block_types", UNET_DOWN_BLOCKS), ("up_block_types", UNET_UP_BLOCKS)):
        if not isinstance(cfg[key], (list, tuple)) or not all(block in allowed for block in cfg[key]):
            raise ValueError(f"UNet config: {key}={cfg[key]!r} is not supported (entries among {allowed})")
    layers = cfg.get("transformer_layers_per_block", 1)
    if any(n != 1 for n in (layers if isinstance(layers, (list, tuple)) else [layers])):
        raise ValueError(f"UNet config: transformer_layers_per_block={layers!r} is not supported (only 1)")
    for key in ("layers_per_block", "cross_attention_dim"):
        if not _positive_int(cfg[key]):
            raise ValueError(f"UNet config: {key}={cfg[key]!r} is not supported (one int for every block)")
    return cfg


# -- AutoencoderKL --------------------------------------------------------------------------------------------
VAE_DEFAULTS = {"in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1,
                "latent_channels": 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215}
VAE_SUPPORTED = {  # key: (test, what is accepted)
    "down_block_types": (lambda v: all(t == "DownEncoderBlock2D" for t in v), "DownEncoderBlock2D only"),
    "up_block_types": (lambda v: all(t == "UpDecoderBlock2D" for t in v), "UpDecoderBlock2D only"),
    "act_fn": (lambda v: v == "silu", "silu"),
    "mid_block_add_attention": (lambda v: v is True, "true"),
    "use_quant_conv": (lambda v: v is True, "true"),
    "use_post_quant_conv": (lambda v: v is True, "true"),
    "shift_factor": (lambda v: v in (None, 0, 0.0), "none"),
    "latents_mean": (lambda v: v is None, "none"),
    "latents_std": (lambda v: v is None, "none"),
}


def vae_config(config: dict) -> dict:
    """The VAE config with defaults filled in; ValueError naming the key when we cannot build it."""
    cfg = {**VAE_DEFAULTS, **config}
    for key, (ok, accepted) in VAE_SUPPORTED.items():
        if key in cfg and not ok(cfg[key]):
            raise ValueError(f"vae config: {key}={cfg[key]!r} is not supported ({accepted}; SD AutoencoderKL only)")
    chans = cfg["block_out_channels"]
    for key in ("down_block_types", "up_block_types"):
        if key in cfg and len(cfg[key]) != len(chans):
            raise ValueError(f"vae config: {key} has {len(cfg[key])} entries, block_out_channels {len(chans)}")
    return cfg


# -- CLIPTextModel --------------------------------------------------------------------------------------------
# transformers' CLIPTextConfig defaults, for keys a config.json may omit.
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5}
TEXT_ACTIVATIONS = ("gelu", "quick_gelu")


def text_config(config: dict) -> dict:
    """The text encoder config (the keys we read) with defaults; ValueError when we cannot build it."""
    cfg = {**TEXT_DEFAULTS, **{k: v for k, v in config.items() if k in TEXT_DEFAULTS}}
    if cfg["hidden_act"] not in TEXT_ACTIVATIONS:
        raise ValueError(f"text encoder config: hidden_act={cfg['hidden_act']!r} is not supported "
                         f"(supported: {', '.join(TEXT_ACTIVATIONS)})")
    if not _positive_int(cfg["num_attention_heads"]) or cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError("text encoder config: hidden_size must be divisible by num_attention_heads")
    return cfg


# -- weight-key layouts ---------------------------------------------------------------------------------------
_LEGACY_VAE = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_LEGACY_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def vae_key(key: str) -> str:
    """Old diffusers VAE attention names (`query/key/value/proj_attn`) -> `to_q/to_k/to_v/to_out.0`; those
    old projections may be 1x1 convs (C, C, 1, 1), which load as Linear weights."""
    return _LEGACY_VAE.sub(lambda m: m.group(1) + _LEGACY_VAE_NAMES[m.group(2)] + ".", key)


def text_encoder_key(key: str) -> str:
    """transformers >= 5's CLIPTextModel keys (`encoder.layers.0...`) -> ours (`text_model.encoder...`)."""
    return "text_model." + key if key.startswith(_TEXT_MODEL_PARTS) else key
