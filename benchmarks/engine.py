"""Engine speed: Jittor vs diffusers/transformers (PyTorch) on the full SD 2.1 architecture.

Times one UNet forward (64x64 latents), one VAE decode and one text encode, plus the two StyleID-sized
self-attentions, with random weights, on the same machine and device. Each (side, part) runs in its own
process (torch and jittor never share one), so peak memory is per side and part. CPU: float32, batches
1 and 2; on a GPU (`--device cuda`, the default when one is visible): float16, batches 1, 2, 4, 8, both
sides on the GPU. The VAE always runs in float32, as the pipeline runs it. Every timed run ends by
waiting for the device (benchmarks/timing.py). Warm-up runs (Jittor compiles on the first call) are
excluded; the figure is the median of --runs (the best of --rounds worker pairs, which alternate, when
the machine is shared). On a GPU, float32 work (the VAE) runs with TF32 off on both sides
(NVIDIA_TF32_OVERRIDE=0).

    .venv/bin/python benchmarks/engine.py --threads 2 --json /tmp/engine.json
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.timing import median_time  # noqa: E402
from common.devkit import sd21_configs, tiny_weights  # noqa: E402  (plain dicts, no Jittor)

# (tokens, channels, heads): the self-attentions of up_blocks.3 and up_blocks.2 at 512x512.
ATTENTION = [(4096, 320, 5), (1024, 640, 10)]
PARTS = ("attention", "unet", "vae_decode", "text_encode")


def arch(name):
    """(unet, vae, text encoder configs, attention cases): SD 2.1's, or the tiny test model's (a smoke run)."""
    if name == "tiny":
        return tiny_weights.UNET, tiny_weights.VAE, tiny_weights.TEXT_ENCODER, [(256, 32, 2)]
    return sd21_configs.UNET, sd21_configs.VAE, sd21_configs.TEXT_ENCODER, ATTENTION


def record(out, key, side, fn, wait, warmup, runs, variant=""):
    """out[key_side_s] = median wall seconds, out[key_side_cpu_s] = median CPU seconds (all threads)."""
    cpu = []
    out[f"{key}_{side}{variant}_s"] = median_time(fn, wait, warmup, runs, cpu)
    out[f"{key}_{side}{variant}_cpu_s"] = cpu[0]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- Jittor side
def jittor_worker(part, batches, dtype, warmup, runs, latent, device, arch_name):
    from common.jittor_env import load_jittor, use_device, wait_device
    jt = load_jittor()
    use_device(device)  # on CUDA: checks that cuDNN and cuBLAS are loaded, one line if not
    import numpy as np
    unet_cfg, vae_cfg, text_cfg, attention_cases = arch(arch_name)

    def fill(model, model_dtype):
        """Cheap random weights: N(0, 1/fan_in) matrices keep activations O(1); 1-D params keep defaults."""
        for var in model.state_dict().values():
            if var.ndim >= 2:
                var.assign(jt.randn(var.shape) * float(np.prod(var.shape[1:])) ** -0.5)
        if model_dtype == "fp16":
            model.float16()
        return model

    cast = (lambda x: x.float16()) if dtype == "fp16" else (lambda x: x)
    out = {}
    with jt.no_grad():
        if part == "attention":
            from common.sd.attention import _attention_generic, attention, fused_cpu_available
            for n, c, h in attention_cases:
                q, k, v = (cast(jt.randn((1, n, c))) for _ in range(3))
                scale = (c // h) ** -0.5
                for upcast in (False, True):  # SD 2.1-base does not upcast; SD 2.1 (768) does
                    key = f"attn_{n}x{c}_h{h}_{dtype}_b1" + ("_upcast" if upcast else "")
                    record(out, key, "jittor", lambda: attention(q, k, v, h, scale, upcast), wait_device,
                           warmup, runs)
                    if fused_cpu_available():  # on CUDA the plain path is the one above
                        record(out, key, "jittor", lambda: _attention_generic(q, k, v, h, scale, upcast),
                               wait_device, warmup, runs, "_plain")
        elif part == "unet":
            from common.sd.unet import UNet2DConditionModel
            unet = fill(UNet2DConditionModel(unet_cfg), dtype)
            for b in batches:
                x = cast(jt.randn((b, 4, latent, latent)))
                ctx = cast(jt.randn((b, 77, unet_cfg["cross_attention_dim"])))
                t = jt.array(np.full((b,), 961, np.int32))
                record(out, f"unet_{dtype}_b{b}", "jittor", lambda: unet(x, t, ctx), wait_device, warmup, runs)
        elif part == "vae_decode":
            from common.sd.vae import AutoencoderKL
            vae = fill(AutoencoderKL(vae_cfg), "fp32")  # SD's VAE overflows in fp16; the pipeline runs it in fp32
            for b in batches:
                z = jt.randn((b, 4, latent, latent))
                record(out, f"vae_decode_fp32_b{b}", "jittor", lambda: vae.decode(z), wait_device, warmup, runs)
        elif part == "text_encode":
            from common.sd.clip import CLIPTextModel
            clip = fill(CLIPTextModel(text_cfg), dtype)
            for b in batches:
                ids = jt.array(np.random.default_rng(0).integers(0, text_cfg["vocab_size"], (b, 77)).astype(np.int32))
                record(out, f"text_encode_{dtype}_b{b}", "jittor", lambda: clip(ids), wait_device, warmup, runs)
        wait_device()
    out[f"{part}_jittor_peak_rss_mib"] = peak_rss_mib()
    if device == "cuda":  # Jittor's allocator keeps what it took: its pool at the end is its peak
        out[f"{part}_jittor_gpu_pool_mib"] = jt.get_mem_info().total_cuda_used / 2 ** 20
    return out


# ---------------------------------------------------------------- PyTorch side
def torch_worker(part, batches, dtype, warmup, runs, latent, threads, device, arch_name):
    import torch
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as Jittor: no TF32
    unet_cfg, vae_cfg, text_cfg, attention_cases = arch(arch_name)
    tdtype = torch.float16 if dtype == "fp16" else torch.float32

    def wait(_result):
        if device == "cuda":
            torch.cuda.synchronize()

    def fill(model, model_dtype=tdtype):
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, p[0].numel() ** -0.5)
        return model.eval().to(device, model_dtype)

    def timed(key, fn):
        record(out, key, "torch", fn, wait, warmup, runs)

    out = {}
    with torch.inference_mode():
        if part == "attention":
            import torch.nn.functional as F
            for n, c, h in attention_cases:
                q, k, v = (torch.randn(1, h, n, c // h, device=device, dtype=tdtype) for _ in range(3))
                for suffix in ("", "_upcast"):  # SDPA has one path; both rows compare against it
                    timed(f"attn_{n}x{c}_h{h}_{dtype}_b1{suffix}", lambda: F.scaled_dot_product_attention(q, k, v))
        elif part == "unet":
            from diffusers import UNet2DConditionModel
            unet = fill(UNet2DConditionModel(**unet_cfg))
            for b in batches:
                x = torch.randn(b, 4, latent, latent, device=device, dtype=tdtype)
                ctx = torch.randn(b, 77, unet_cfg["cross_attention_dim"], device=device, dtype=tdtype)
                t = torch.full((b,), 961, device=device)
                timed(f"unet_{dtype}_b{b}", lambda: unet(x, t, ctx))
        elif part == "vae_decode":
            from diffusers import AutoencoderKL
            vae = fill(AutoencoderKL(**vae_cfg), torch.float32)
            for b in batches:
                z = torch.randn(b, 4, latent, latent, device=device)
                timed(f"vae_decode_fp32_b{b}", lambda: vae.decode(z))
        elif part == "text_encode":
            from transformers import CLIPTextConfig, CLIPTextModel
            clip = fill(CLIPTextModel(CLIPTextConfig(**text_cfg)))
            for b in batches:
                ids = torch.randint(0, text_cfg["vocab_size"], (b, 77), device=device)
                timed(f"text_encode_{dtype}_b{b}", lambda: clip(ids))
    out[f"{part}_torch_peak_rss_mib"] = peak_rss_mib()
    if device == "cuda":
        out[f"{part}_torch_gpu_pool_mib"] = torch.cuda.max_memory_reserved() / 2 ** 20
        out[f"{part}_torch_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


# ---------------------------------------------------------------- driver
def run_worker(python, side, part, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.device == "cuda":  # float32 (the VAE always) without TF32 on both sides: Jittor's cuDNN convs
        env["NVIDIA_TF32_OVERRIDE"] = "0"  # would use it by default, PyTorch's matmuls would not
    if side == "torch" and args.torch_path is not None:
        env["PYTHONPATH"] = args.torch_path  # the reference's packages, not the Jittor side's
    cmd = [python, __file__, "--worker", side, "--parts", part, "--batches", args.batches, "--dtype", args.dtype,
           "--warmup", str(args.warmup), "--runs", str(args.runs), "--latent", str(args.latent),
           "--threads", str(args.threads), "--device", args.device, "--arch", args.arch]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{side} {part} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {f"{part}_{side}_error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT "):])


def add_ratios(results):
    for key in list(results):
        for suffix, ratio in (("_jittor_s", "_ratio_vs_torch"), ("_jittor_cpu_s", "_cpu_ratio_vs_torch")):
            torch_key = key.replace(suffix, suffix.replace("jittor", "torch"))
            if key.endswith(suffix) and torch_key in results:
                results[key.replace(suffix, ratio)] = results[key] / results[torch_key]
    return results


def print_table(results):
    def cell(key, fmt):
        return "-" if key not in results else format(results[key], fmt)

    rows = sorted({k[:-len("_jittor_s")] for k in results if k.endswith("_jittor_s")})
    for key in sorted(k for k in results if k.endswith("_error")):
        print(f"{key}: {results[key]}")
    print(f"{'case (seconds)':34} {'jittor':>8} {'torch':>8} {'ratio':>6} {'jt cpu':>8} {'th cpu':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row:34} {cell(row + '_jittor_s', '8.3f')} {cell(row + '_torch_s', '8.3f'):>8} "
              f"{cell(row + '_ratio_vs_torch', '6.2f'):>6} {cell(row + '_jittor_cpu_s', '8.3f')} "
              f"{cell(row + '_torch_cpu_s', '8.3f'):>8} {cell(row + '_cpu_ratio_vs_torch', '6.2f'):>6}")
        if f"{row}_jittor_plain_s" in results:
            print(f"{row + ' (plain Jittor ops)':34} {results[f'{row}_jittor_plain_s']:8.3f}")
    for key in sorted(k for k in results if k.endswith("_mib")):
        print(f"{key:45} {results[key]:10.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--batches", default=None, help="comma list (default 1,2 on CPU, 1,2,4,8 on GPU)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default=None, help="default fp32 on CPU, fp16 on GPU")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cuda when a GPU is visible")
    parser.add_argument("--arch", choices=("sd21", "tiny"), default="sd21", help="tiny: the test model (smoke runs)")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 64 = 512x512 images; tiny 16)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="run both sides this many times, keep the best")
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    parser.add_argument("--torch-path", default=None, help="PYTHONPATH for the PyTorch side (instead of ours)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--worker", choices=("jittor", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        batches = [int(b) for b in args.batches.split(",")]
        if args.worker == "jittor":
            result = jittor_worker(args.parts, batches, args.dtype, args.warmup, args.runs, args.latent, args.device,
                                   args.arch)
        else:
            result = torch_worker(args.parts, batches, args.dtype, args.warmup, args.runs, args.latent, args.threads,
                                  args.device, args.arch)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from common.jittor_env import gpu_present  # imports no jittor
    args.device = args.device or ("cuda" if gpu_present() else "cpu")
    gpu = args.device == "cuda"
    args.dtype = args.dtype or ("fp16" if gpu else "fp32")
    args.batches = args.batches or ("1,2,4,8" if gpu else "1,2")
    args.latent = args.latent or (16 if args.arch == "tiny" else 64)
    have_torch = Path(args.torch_python).exists() or shutil.which(args.torch_python) is not None
    if not have_torch:
        print(f"no reference python at {args.torch_python}: timing Jittor only", file=sys.stderr)
    results = {"threads": args.threads, "device": args.device, "dtype": args.dtype, "arch": args.arch,
               "latent": args.latent}
    for part in args.parts.split(","):
        if part not in PARTS:
            parser.error(f"unknown part {part!r}; choose from {PARTS}")
        for _ in range(args.rounds):  # alternate sides; keep each figure's best round (others share the CPU)
            for python, side in ((sys.executable, "jittor"), (args.torch_python, "torch")):
                if side == "torch" and not have_torch:
                    continue
                for key, value in run_worker(python, side, part, args).items():
                    results[key] = min(value, results.get(key, value))
                if args.json:  # after every worker: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(add_ratios(dict(results)), indent=2) + "\n")
    print_table(add_ratios(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
