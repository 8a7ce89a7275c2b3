"""Write a diffusers model folder as an original-layout (LDM) single-file checkpoint, for tests and benchmarks.

    python -m common.devkit.single_file FOLDER OUT.safetensors|OUT.ckpt [--ema] [--text openclip|clip]

The inverse of diffusers' `from_single_file` conversion, written independently of the engine's reader
(common/sd/single_file.py) so the two check each other, and both are checked against diffusers
(tests/golden/make_single_file.py). SD 2.x files get an OpenCLIP text encoder (q/k/v fused into
`in_proj`, one more layer than SD uses, `text_projection` and `logit_scale`), SD 1.x files transformers'
CLIP under `cond_stage_model.transformer.`; both get the LDM schedule buffers real files carry. `--ema`
adds a `model_ema.` UNet copy with other values (`EMA_SEED`), so reading the wrong set shows. A `.ckpt`
is a PyTorch Lightning checkpoint (epoch, callbacks, optimizer state around the `state_dict`), written by
the project's torch-zip writer. NumPy only.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.devkit.tiny_weights import SEED, tiny_param
from common.sd.weights import named_global, read_weights, save_torch_zip

EMA_SEED = SEED + 1
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_key(name: str, config: dict) -> str:
    """The LDM key (without `model.diffusion_model.`) of our UNet parameter `name`."""
    module, _, leaf = name.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{leaf}"
    layers = config["layers_per_block"]
    n = layers + 1
    parts = name.split(".")
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{parts[1]}.{parts[2]}"]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}.{_resnet(rest) if parts[1] == 'resnets' else rest}"
    kind, i, sub, j, rest = parts[0], int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if kind == "down_blocks":
        if sub == "downsamplers":
            return f"input_blocks.{(i + 1) * n}.0.op.{rest[len('conv.'):]}"
        slot = 0 if sub == "resnets" else 1
        return f"input_blocks.{1 + i * n + j}.{slot}.{_resnet(rest) if slot == 0 else rest}"
    if sub == "upsamplers":
        attention = config["up_block_types"][i] == "CrossAttnUpBlock2D"
        return f"output_blocks.{i * n + layers}.{2 if attention else 1}.{rest}"
    slot = 0 if sub == "resnets" else 1
    return f"output_blocks.{i * n + j}.{slot}.{_resnet(rest) if slot == 0 else rest}"


def _resnet(rest: str) -> str:
    module, _, leaf = rest.rpartition(".")
    return f"{_RESNET[module]}.{leaf}"


def vae_key(name: str, levels: int) -> str:
    """The LDM key (without `first_stage_model.`) of our VAE parameter `name`."""
    parts = name.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return name
    coder, rest = parts[0], parts[1:]
    shortcut = {"conv_shortcut": "nin_shortcut"}
    if rest[0] == "conv_norm_out":
        return f"{coder}.norm_out.{rest[1]}"
    if rest[0] in ("conv_in", "conv_out"):
        return name
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{shortcut.get(rest[3], rest[3])}.{rest[4]}"
        attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[rest[3]]
        return f"{coder}.mid.attn_1.{attention}.{rest[-1]}"
    i = int(rest[1]) if rest[0] == "down_blocks" else levels - 1 - int(rest[1])
    side = "down" if rest[0] == "down_blocks" else "up"
    if rest[2] == "resnets":
        return f"{coder}.{side}.{i}.block.{rest[3]}.{shortcut.get(rest[4], rest[4])}.{rest[5]}"
    return f"{coder}.{side}.{i}.{side}sample.conv.{rest[-1]}"


_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def openclip_state(text: dict, config: dict) -> dict:
    """OpenCLIP keys (without `cond_stage_model.model.`) of our text encoder `text`, plus the layer SD skips
    (drawn like the others), the projection and the temperature OpenCLIP also saves."""
    out = {"token_embedding.weight": text["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": text["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": text["text_model.final_layer_norm.weight"],
           "ln_final.bias": text["text_model.final_layer_norm.bias"]}
    layers, width = config["num_hidden_layers"], config["hidden_size"]
    for n in range(layers):
        ours = f"text_model.encoder.layers.{n}"
        block = f"transformer.resblocks.{n}"
        for kind in ("weight", "bias"):
            out[f"{block}.attn.in_proj_{kind}"] = np.concatenate(
                [text[f"{ours}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
        for module, ldm in _OPENCLIP.items():
            for kind in ("weight", "bias"):
                out[f"{block}.{ldm}.{kind}"] = text[f"{ours}.{module}.{kind}"]
    last = {k.replace(".0.", f".{layers}.", 1): v for k, v in out.items() if k.startswith("transformer.resblocks.0.")}
    out.update({k: tiny_param(k, v.shape) for k, v in last.items()})
    out["text_projection"] = tiny_param("text_projection", (width, width))
    out["logit_scale"] = np.array(4.6052, np.float32)
    return out


def ldm_state(folder, text: str = None, ema: bool = False) -> dict:
    """The single-file state dict of diffusers folder `folder` (float32 arrays)."""
    folder = Path(folder)
    configs = {c: json.loads((folder / c / "config.json").read_text()) for c in ("unet", "vae", "text_encoder")}
    weights = {c: read_weights(next(p for p in (folder / c).glob("*.safetensors"))) for c in configs}
    text = text or ("openclip" if configs["text_encoder"].get("hidden_act") == "gelu" else "clip")
    state = {}
    for name, value in weights["unet"].items():
        key = unet_key(name, configs["unet"])
        state[f"model.diffusion_model.{key}"] = value
        if ema:
            state["model_ema.diffusion_model" + key.replace(".", "")] = tiny_param(name, value.shape, EMA_SEED)
    if ema:
        state["model_ema.decay"] = np.array(0.9999, np.float32)
        state["model_ema.num_updates"] = np.array(1000, np.int32)
    levels = len(configs["vae"]["block_out_channels"])
    for name, value in weights["vae"].items():
        key = vae_key(name, levels)
        flat = ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2 and ".norm." not in key
        state[f"first_stage_model.{key}"] = value[:, :, None, None] if flat else value  # LDM: 1x1 convs
    if text == "openclip":
        clip = openclip_state(weights["text_encoder"], configs["text_encoder"])
        state.update({f"cond_stage_model.model.{k}": v for k, v in clip.items()})
    else:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in weights["text_encoder"].items()})
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    state["betas"] = betas.astype(np.float32)
    state["alphas_cumprod"] = np.cumprod(1 - betas).astype(np.float32)
    return state


class _LightningCallback:
    """Pickles as an instance of Lightning's ModelCheckpoint (a class the reader must not import)."""

    def __reduce__(self):
        return named_global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"), (), \
            {"best_model_score": 0.1, "dirpath": "/logs/checkpoints"}


def lightning_extras() -> dict:
    """What a Lightning training checkpoint holds besides its state_dict."""
    return {"epoch": 6, "global_step": 110000, "pytorch-lightning_version": "1.4.2",
            "callbacks": {"ModelCheckpoint": _LightningCallback()},
            "optimizer_states": [{"state": {0: {"exp_avg": np.zeros(4, np.float32)}}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": []}


def write_single_file(folder, out, text: str = None, ema: bool = False) -> Path:
    """Write `folder` as `out` (.safetensors, or a Lightning .ckpt for any other suffix)."""
    out = Path(out)
    state = ldm_state(folder, text, ema)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.name.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
    else:
        save_torch_zip(state, tmp, extras=lightning_extras())
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--ema", action="store_true", help="add a model_ema.* UNet copy (other values)")
    parser.add_argument("--text", choices=("openclip", "clip"), help="text encoder layout (default: by hidden_act)")
    args = parser.parse_args(argv)
    print(write_single_file(args.folder, args.out, args.text, args.ema))
    return 0


if __name__ == "__main__":
    sys.exit(main())
