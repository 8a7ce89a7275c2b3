"""The first GPU run as one command: is the GPU path whole, is it right, how fast is it, how much memory.

    source .device/setup.sh && python3 benchmarks/gpu_check.py --out $OUT/gpu_check     # the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check           # here, ~1-2 minutes

Every step is a subprocess with its own timeout, all inside --budget seconds (a step that no longer fits
is recorded as skipped), and its results land in --out as soon as it ends, so a run cut short still
returns what it finished. The folder holds at most 8 files (what a device run brings back):

    summary.json     set-up (versions, GPU, the PyTorch side), then per step: status, seconds, timeout,
                     peak GPU memory and utilisation sampled during it; rewritten after every step
    1_probe.json     benchmarks/probe.py: CUDA on, cuDNN/cuBLAS loaded, one fp16 conv, Linear, GroupNorm
                     and attention compiled and run as the right kernels; the run stops here if it fails
    2_parity.json    benchmarks/parity.py against the committed goldens, fp32 (TF32 off) and fp16, each
                     in its own process; fp16 adds the cost of cuDNN's fp16 accumulation on one conv
    3_engine.json    benchmarks/engine.py: SD 2.1 UNet fp16 at batch 1, 2, 4, 8 against diffusers (SDPA)
                     on the same GPU, then attention alone
    4_stages.json    benchmarks/stages.py at SD 2.1's size with few steps (per-step figures): producer,
                     consumer, the per-image design
    5_vae_text.json  engine.py: VAE decode (fp32) and text encode (fp16)
    log.txt          every step's command and output
    samples.csv      time, GPU memory used (MiB), GPU utilisation (%) every 0.5 s

The PyTorch side needs diffusers, which the GPU machine lacks: `benchmarks/gpu_prepare.sh` (run where pip
reaches PyPI) downloads its wheels into `.whl/`; this script installs them into its own folder for the
PyTorch processes only (the Jittor processes keep set-up's numpy). Without them it times Jittor alone.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
TORCH_SITE = Path("/tmp/jstyleid-torch-site")


def steps(smoke: bool, work: Path, torch_args: list) -> list:
    """(result file, [(name, timeout_s, command, extra env)]) for each step, in order of value."""
    py = [sys.executable]
    if smoke:
        device = ["--device", "cpu"]
        engine = py + ["benchmarks/engine.py", *device, "--arch", "tiny", "--batches", "1", "--runs", "1",
                       "--warmup", "1", *torch_args]
        stages = py + ["benchmarks/stages.py", *device, "--arch", "tiny", "--size", "64", "--gen-steps", "1",
                       "--sty-steps", "1", "--per-image", "1", "--repeat", "1", "--dtype", "float32"]  # the tiny
        # model is written once into stages.py's default folder and reused
        conv = ["--conv-channels", "32"]
        unet, vae_text = [], []
    else:
        device = ["--device", "cuda"]
        engine = py + ["benchmarks/engine.py", *device, "--dtype", "fp16", "--warmup", "2", "--runs", "5",
                       *torch_args]
        stages = py + ["benchmarks/stages.py", *device, "--arch", "sd21", "--size", "512", "--gen-steps", "4",
                       "--sty-steps", "4", "--per-image", "1", "--repeat", "1", "--dtype", "float16",
                       "--workdir", str(work / "bench")]  # the random SD 2.1 folder (2.6 GB) goes with the run
        conv = []
        unet, vae_text = ["--batches", "1,2,4,8"], ["--batches", "1,4"]
    parity = py + ["benchmarks/parity.py", *device, *conv]
    return [
        ("1_probe.json", [("probe", 180, py + ["benchmarks/probe.py", *device, "--json", str(work / "probe.json")],
                           {})]),
        ("2_parity.json", [("parity_fp32", 120, parity + ["--dtype", "float32", "--json", str(work / "parity_fp32.json")],
                            {"NVIDIA_TF32_OVERRIDE": "0"}),
                           ("parity_fp16", 120, parity + ["--dtype", "float16", "--json", str(work / "parity_fp16.json")],
                            {})]),
        ("3_engine.json", [("engine_unet", 240, engine + ["--parts", "unet", *unet, "--json", str(work / "engine_unet.json")],
                            {}),
                           ("engine_attention", 90, engine + ["--parts", "attention", "--json",
                                                              str(work / "engine_attention.json")], {})]),
        ("4_stages.json", [("stages", 300, stages + ["--json", str(work / "stages.json")], {})]),
        ("5_vae_text.json", [("engine_vae_text", 150, engine + ["--parts", "vae_decode,text_encode", *vae_text,
                                                                "--json", str(work / "engine_vae_text.json")], {})]),
    ]


class Sampler(threading.Thread):
    """Every `every` seconds: (time, memory used in MiB, utilisation %) of GPU 0 (nvidia-smi), or of the
    machine's RAM and load on a CPU run; appended to a CSV and kept for per-step peaks."""

    def __init__(self, path: Path, gpu: bool, every=0.5):
        super().__init__(daemon=True)
        self.path, self.gpu, self.every = path, gpu, every
        self.rows, self.done = [], threading.Event()

    def read(self):
        if self.gpu:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True,
                                 timeout=10).stdout.split(",")
            return float(out[0]), float(out[1])
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = lambda key: float(info[key].split()[0])  # noqa: E731
        return (kib("MemTotal") - kib("MemAvailable")) / 1024, 100 * os.getloadavg()[0] / (os.cpu_count() or 1)

    def run(self):
        with open(self.path, "w") as f:
            f.write("time,memory_mib,utilisation_pct\n")
            while not self.done.is_set():
                try:
                    row = (time.time(), *self.read())
                except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                    row = None
                if row:
                    self.rows.append(row)
                    f.write(f"{row[0]:.2f},{row[1]:.0f},{row[2]:.0f}\n")
                    f.flush()
                self.done.wait(self.every)

    def peak(self, start, end) -> dict:
        inside = [r for r in self.rows if start <= r[0] <= end]
        if not inside:
            return {}
        return {"peak_memory_mib": max(r[1] for r in inside), "peak_utilisation_pct": max(r[2] for r in inside)}


def write_json(path: Path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_step(name, timeout, cmd, env, log):
    """(status, seconds): ok, failed (exit N), or timeout; the step and its children end here either way."""
    log.write(f"\n===== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n")
    log.flush()
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"timeout after {timeout:.0f} s"
    finally:  # the step's own subprocesses (benchmark workers) too: none may hold the GPU into the next step
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    log.flush()
    return status, time.time() - t0


def torch_side(gpu: bool, smoke: bool, notes: dict) -> list:
    """engine.py's PyTorch arguments: on the GPU machine, its python3 with diffusers from .whl/."""
    if smoke or not gpu:
        return []  # engine.py's default: .venv-ref when there is one
    if WHEELS.is_dir() and any(WHEELS.glob("*.whl")):
        shutil.rmtree(TORCH_SITE, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--target", str(TORCH_SITE), *map(str, sorted(WHEELS.glob("*.whl")))],
                              capture_output=True, text=True, timeout=120)
        notes["torch_wheels"] = sorted(p.name for p in WHEELS.glob("*.whl"))
        if done.returncode:
            notes["torch_wheels_error"] = done.stderr.strip()[-500:]
    check = subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers; print(torch.__version__, "
                            "diffusers.__version__, transformers.__version__, torch.cuda.get_device_name(0))"],
                           env={**os.environ, "PYTHONPATH": str(TORCH_SITE)}, capture_output=True, text=True,
                           timeout=120)
    if check.returncode:
        notes["torch_side"] = "unavailable: " + (check.stderr.strip().splitlines() or ["?"])[-1]
        return ["--torch-python", "/nonexistent"]  # time Jittor alone
    notes["torch_side"] = check.stdout.strip()
    return ["--torch-python", sys.executable, "--torch-path", str(TORCH_SITE)]


def set_up(gpu: bool) -> dict:
    notes = {"python": sys.version.split()[0], "executable": sys.executable, "started": time.strftime("%F %T"),
             "pythonpath": os.environ.get("PYTHONPATH", "")}
    from importlib.metadata import PackageNotFoundError, version
    for package in ("jittor", "numpy"):
        try:
            notes[package] = version(package)
        except PackageNotFoundError:
            notes[package] = None
    commands = {"gpu": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                "nvcc": ["nvcc", "--version"]} if gpu else {}
    for key, cmd in commands.items():
        try:
            notes[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[-1:]
        except (OSError, subprocess.TimeoutExpired) as e:
            notes[key] = f"unavailable: {e}"
    return notes


HEADLINE = ("unet", "text_encoder", "vae_", "conv_fp16", "_ratio_vs_torch", "_jittor_s", "_step", "speedup", "_error",
            "gpu_pool", "problems")


def headline(out: Path):
    """The figures worth reading first, one per line (a device run's reply shows the end of the output)."""
    for path in sorted(out.glob("[0-9]_*.json")):
        for step, figures in json.loads(path.read_text()).items():
            for key, value in figures.items():
                if any(h in key for h in HEADLINE) and not key.endswith(("_cpu_s", "_rss_mib")):
                    shown = f"{value:.4g}" if isinstance(value, float) else value
                    print(f"{step}.{key} = {shown}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the results folder (created; at most 8 files)")
    p.add_argument("--budget", type=float, default=None, help="seconds for every step together (default 390 on "
                   "a GPU, 780 with --cpu-smoke)")
    p.add_argument("--cpu-smoke", action="store_true", help="the same steps on the CPU, tiny sizes (CI)")
    a = p.parse_args()
    smoke = a.cpu_smoke
    gpu = not smoke
    budget = a.budget or (780.0 if smoke else 390.0)
    deadline = time.time() + budget
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"jstyleid-gpu-check-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(a.out / "samples.csv", gpu)
    sampler.start()
    summary = {"mode": "cpu-smoke" if smoke else "gpu", "budget_s": budget, "setup": set_up(gpu), "steps": {}}
    write_json(a.out / "summary.json", summary)
    with open(a.out / "log.txt", "a") as log:
        summary["setup"]["torch_args"] = torch_args = torch_side(gpu, smoke, summary["setup"])
        write_json(a.out / "summary.json", summary)
        for result_file, parts in steps(smoke, work, torch_args):
            merged = {}
            for name, timeout, cmd, env in parts:
                left = deadline - time.time()
                if left < 15:
                    summary["steps"][name] = {"status": "skipped: out of time"}
                    continue
                # the smoke's steps share the budget alone: on a cold cache any one of them may compile for minutes
                limit = left if smoke else min(timeout, left)
                start = time.time()
                status, seconds = run_step(name, limit, cmd, env, log)
                summary["steps"][name] = {"status": status, "seconds": round(seconds, 1),
                                          "timeout_s": round(limit), **sampler.peak(start, time.time())}
                produced = work / f"{name.split('_', 1)[0] if name == 'probe' else name}.json"
                if produced.is_file():
                    merged[name] = json.loads(produced.read_text())
                    write_json(a.out / result_file, merged)
                write_json(a.out / "summary.json", summary)
                if name == "probe" and status != "ok":
                    summary["stopped"] = "the probe failed: the GPU path is not whole (see 1_probe.json, log.txt)"
                    write_json(a.out / "summary.json", summary)
                    break
            if "stopped" in summary:
                break
    sampler.done.set()
    sampler.join(timeout=5)
    summary["finished"] = time.strftime("%F %T")
    write_json(a.out / "summary.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    headline(a.out)
    for name, step in summary["steps"].items():
        print(f"{name:18} {step['status']:28} {step.get('seconds', 0):7.1f} s  "
              f"peak {step.get('peak_memory_mib', float('nan')):8.0f} MiB")
    print(f"results in {a.out}")
    failed = [n for n, s in summary["steps"].items() if s["status"] != "ok"]
    sys.exit(1 if "stopped" in summary or failed else 0)


if __name__ == "__main__":
    main()
