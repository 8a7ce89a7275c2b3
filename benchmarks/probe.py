"""Is Jittor's device path whole? Select the device, then compile and run one conv, Linear, GroupNorm and
attention in the run's dtype, and check from Jittor's profiler which kernels ran.

    python benchmarks/probe.py --device cuda --json probe.json

On CUDA the conv must run as cuDNN's (`cudnn_conv`), the Linear and attention's products as cuBLAS's; on
the CPU as oneDNN's (`mkl_conv`, `mkl_matmul`) and attention as the fused kernel (a `code` op). Exits 1 with one line naming what is missing, after writing what it found.
Compile and run seconds are the first and second call of each op (the first compiles).
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the kernel name (in Jittor's profile) each op must run as, per device
EXPECTED = {"cuda": {"conv": "cudnn_conv", "linear": "cublas", "attention": "cublas_batched"},
            "cpu": {"conv": "mkl_conv", "linear": "mkl_matmul", "attention": "code"}}


def probe(device: str, dtype: str) -> dict:
    from common.jittor_env import DeviceUnavailable, load_jittor, use_device, wait_device
    jt = load_jittor()
    out = {"device": device, "dtype": dtype, "jittor": jt.__version__, "problems": []}
    try:
        use_device(device)
    except DeviceUnavailable as e:
        out["problems"].append(str(e))
        return out
    extern = jt.compile_extern
    out.update(use_cuda=int(jt.flags.use_cuda), use_tensorcore=int(jt.flags.use_tensorcore),
               cudnn=getattr(extern, "cudnn", None) is not None, cublas=getattr(extern, "cublas_ops", None) is not None,
               mkl=getattr(extern, "mkl_ops", None) is not None)
    from common.sd.attention import attention
    from common.sd.layers import GroupNorm
    nn = jt.nn
    cast = (lambda m: m.float16()) if dtype == "float16" else (lambda m: m)
    conv, linear, norm = cast(nn.Conv2d(64, 64, 3, padding=1)), cast(nn.Linear(64, 128)), cast(GroupNorm(8, 64))
    x = jt.randn((2, 64, 16, 16)).cast(dtype)
    tokens = jt.randn((2, 256, 64)).cast(dtype)
    ops = {"conv": lambda: conv(x), "linear": lambda: linear(tokens), "groupnorm": lambda: norm(x),
           "attention": lambda: attention(tokens, tokens, tokens, 1, 64 ** -0.5)}
    kernels = {}
    with jt.no_grad():
        for name, op in ops.items():
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                y = op()
                wait_device(y)
                times.append(time.perf_counter() - t0)
            values = y.float32().numpy()
            out[f"{name}_compile_s"], out[f"{name}_run_s"] = times
            out[f"{name}_dtype"] = str(y.dtype)
            if not (abs(values) < float("inf")).all():
                out["problems"].append(f"{name} gave non-finite values")
            with jt.profile_scope(warmup=0, rerun=0) as report:
                wait_device(op())
            kernels[name] = sorted({row[0].split("«")[0] or "fused" for row in report[1:]})
    out["kernels"] = kernels
    for name, kernel in EXPECTED[device].items():
        if not any(k.startswith(kernel) for k in kernels[name]):
            out["problems"].append(f"{name} did not run as {kernel} (ran {kernels[name]})")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--dtype", choices=("float16", "float32"), default=None, help="default float16 on CUDA")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    result = probe(a.device, a.dtype or ("float16" if a.device == "cuda" else "float32"))
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    if result["problems"]:
        print("probe: the device path is not whole: " + "; ".join(result["problems"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
