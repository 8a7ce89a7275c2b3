"""The tiny random SD-2.1-shaped model: configs and a deterministic weight rule, in plain NumPy.

Both sides of the parity tests use this file: `common.devkit.tiny_model` (Jittor side) writes the checkpoint, and
the reference scripts (PyTorch side, another process) fill diffusers/transformers modules with the very
same numbers. Nothing here imports jittor or torch.

The UNet keeps SD 2.1's four levels (3 cross-attention down blocks, 3 cross-attention up blocks), so the
StyleID layers `up_blocks.{2,3}.attentions.{0,1,2}` exist; channels are few and shared between levels so
Jittor compiles few kernel shapes. 8 groups keep several channels per group (32 on 32 hides layout bugs).

The SD 1.x family (`*_SD1`, the original StyleID setting) shares those shapes and differs where SD 1.x
does: 1x1-conv transformer projections and no attention upcast (both by omitting the keys, as SD 1.x's
config.json does), one head count for every level, a quick_gelu text encoder, epsilon prediction.
"""
import zlib

import numpy as np

SEED = 2024

UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "attention_head_dim": [2, 2, 4, 4],
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "upcast_attention": True,
    "norm_num_groups": 8,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
}

VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "act_fn": "silu",
    "sample_size": 128,
    "scaling_factor": 0.18215,
}

TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "torch_dtype": "float32",
}

# SD 1.x writes one int, 8 (= 8 heads); 4 heads give head dims 8 and 16 here, so neither reading of the
# name (heads or head dim) can pass for the other.
UNET_SD1 = {**{k: v for k, v in UNET.items() if k not in ("use_linear_projection", "upcast_attention")},
            "attention_head_dim": 4}

TEXT_ENCODER_SD1 = {**TEXT_ENCODER, "hidden_act": "quick_gelu", "bos_token_id": 0, "eos_token_id": 2}

SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

# SD 1.x ships a PNDM config (epsilon by default, no prediction_type key); DDIM reads the same values.
SCHEDULER_SD1 = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

LORA_RANK = 4


def _is_norm(name: str) -> bool:
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return "norm" in module


def tiny_param(name: str, shape, seed: int = SEED) -> np.ndarray:
    """The float32 value of parameter `name`: seeded by the name, so any library can rebuild it.

    Norm weights are 1 + 0.1·N and norm biases 0.1·N (the defaults 1 and 0 would hide swapped tensors);
    everything else is 0.05·N.
    """
    rng = np.random.default_rng((seed ^ zlib.crc32(name.encode())) & 0xFFFFFFFF)
    x = rng.standard_normal(tuple(shape)).astype(np.float32)
    if _is_norm(name) and len(shape) == 1:
        return (1.0 + 0.1 * x).astype(np.float32) if name.endswith(".weight") else (0.1 * x).astype(np.float32)
    return (0.05 * x).astype(np.float32)


def tiny_state_dict(shapes: dict, seed: int = SEED) -> dict:
    """{name: array} for a {name: shape} listing."""
    return {name: tiny_param(name, shape, seed) for name, shape in shapes.items()}
