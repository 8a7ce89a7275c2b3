"""Parity on this device: the engine's outputs against the committed goldens (tests/golden/*.npz, written
by diffusers/transformers in float32), as max|y - y_ref| / max|y_ref|, printed as JSON.

    python benchmarks/parity.py --device cuda --dtype float32 --json parity_fp32.json   # NVIDIA_TF32_OVERRIDE=0
    python benchmarks/parity.py --device cuda --dtype float16 --json parity_fp16.json

Run each dtype in its own process: cuDNN's algorithm cache is keyed by shapes, not dtype, so an fp16 run
after fp32 ones on the same shapes may reuse an algorithm chosen for fp32. Float32 should be run with
TF32 off (NVIDIA_TF32_OVERRIDE=0; Jittor's cuDNN convs would otherwise use it on Ampere and later).

Components: the tiny UNet as configured (attention upcast) and without upcast (SD 2.1-base's setting),
the text encoder, the VAE (always float32, as the pipeline runs it). In float16, also one UNet-sized 3x3
conv (640 channels at 32x32, 5760 products per output) against a float64 reference of the same
fp16-rounded inputs: `conv_fp16_rel_err` is Jittor's, `conv_fp16_floor` the error of rounding the exact
result to fp16 (what fp32 accumulation, as PyTorch does it, about reaches), so their ratio is what
Jittor's fp16 accumulation in cuDNN costs.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT / "tests" / "golden"


def rel_err(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def conv_reference(x, w):
    """float64 3x3 convolution, stride 1, padding 1, by im2col (x: N,C,H,W; w: O,C,3,3)."""
    n, c, h, width = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([padded[:, :, i:i + h, j:j + width] for i in range(3) for j in range(3)], axis=2)
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(n * h * width, c * 9)
    out = cols @ w.astype(np.float64).reshape(w.shape[0], c * 9).T
    return out.reshape(n, h, width, -1).transpose(0, 3, 1, 2)


def parity(device: str, dtype: str, conv_channels: int) -> dict:
    from common.jittor_env import load_jittor, use_device
    jt = load_jittor()
    use_device(device)
    from common.devkit.tiny_weights import TEXT_ENCODER, UNET, VAE, tiny_param
    from common.sd.attention import fused_cpu_available
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    from common.sd.weights import load_state_dict

    def build(cls, config, model_dtype):
        model = cls(config)
        if model_dtype == "float16":
            model.float16()
        load_state_dict(model, {k: tiny_param(k, v.shape) for k, v in model.state_dict().items()}, "tiny weights")
        return model

    def arr(x):
        return jt.array(x).cast(dtype)

    out = {"device": device, "dtype": dtype, "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE")}
    with jt.no_grad():
        g = np.load(GOLDEN / "unet.npz")
        unet = build(UNet2DConditionModel, UNET, dtype)
        t = jt.array(g["timesteps"].astype(np.int32))
        out["unet"] = rel_err(unet(arr(g["sample"]), t, arr(g["context"])).float32().numpy(), g["output"])
        if fused_cpu_available():
            out["unet_no_upcast"] = "the run above: the fused CPU kernel computes in fp32 either way"
        else:
            for layer in unet.attention_layers().values():
                layer.upcast = False  # the golden is fp32, where upcasting changes nothing
            out["unet_no_upcast"] = rel_err(unet(arr(g["sample"]), t, arr(g["context"])).float32().numpy(),
                                            g["output"])
        del unet
        g = np.load(GOLDEN / "clip.npz")
        clip = build(CLIPTextModel, TEXT_ENCODER, dtype)
        out["text_encoder"] = rel_err(clip(g["encode_ids"]).float32().numpy(), g["hidden"])
        del clip
        g = np.load(GOLDEN / "vae.npz")
        vae = build(AutoencoderKL, VAE, "float32")
        mean, _ = vae.encode(jt.array(g["image"]))
        out["vae_encode_mean_fp32"] = rel_err(mean.numpy(), g["mean"])
        out["vae_decode_fp32"] = rel_err(vae.decode(jt.array(g["latent"])).numpy(), g["decoded"])
        if dtype == "float16":
            rng = np.random.default_rng(0)
            c = conv_channels
            x = rng.standard_normal((1, c, 32, 32)).astype(np.float16)
            w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float16)
            conv = jt.nn.Conv2d(c, c, 3, padding=1, bias=False).float16()
            conv.weight.assign(jt.array(w))
            ref = conv_reference(x, w)
            out["conv_channels"] = c
            out["conv_fp16_rel_err"] = rel_err(conv(jt.array(x)).float32().numpy(), ref)
            out["conv_fp16_floor"] = rel_err(ref.astype(np.float16), ref)
            out["conv_fp16_cost"] = out["conv_fp16_rel_err"] / max(out["conv_fp16_floor"], 1e-12)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--conv-channels", type=int, default=640, help="the fp16 conv check's width")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    result = parity(a.device, a.dtype, a.conv_channels)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
