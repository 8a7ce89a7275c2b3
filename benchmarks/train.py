"""LoRA training speed and memory: seconds per training step and peak RSS, ours against diffusers + peft.

    .venv/bin/python benchmarks/train.py --json train.json [--torch-python .venv-ref/bin/python]

Both sides train the same model folder (random weights with SD 2.1's shapes), at the same resolution,
batch 1, rank-4 LoRA on every to_q/to_k/to_v/to_out.0, AdamW, float32, each in its own process (torch and
Jittor never share one; peak RSS is per side). Figures:
- `*_s_per_step`: the fastest of --steps timed steps after --warmup (Jittor compiles on the first ones).
  `torch_unet_step` is what ours does per step (UNet forward + backward + AdamW on prepared inputs);
  `torch_script_step` adds what diffusers' and JDiffusion's scripts also run every step (VAE encode of
  the image and a text encode of the prompt; we encode both once).
- `*_peak_rss_mib` and `*_train_rss_mib` (peak minus the resident size once the model is loaded and the
  data prepared: what training itself adds, mostly saved activations).
- With `--project`, our training RSS is also measured at half the size, and the two points give the
  projected training memory of full SD 2.1 at 512 px (see `project()`).

CPU default: `--arch half` (SD 2.1's layout, every width halved; `benchmarks/stages.py`) at 256 px.
GPU: `--arch sd21 --size 512`.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0


def images(size: int):
    import numpy as np
    return np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)


def timed(step, warmup: int, steps: int) -> list:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- our side (Jittor)

def part_jittor(a) -> dict:
    import numpy as np

    from common.config import TrainConfig
    from common.sd.pipeline import StableDiffusion
    from producer.train_data import Draws
    from producer.train_loop import LoraTrainer
    sd = StableDiffusion.load(a.model, "float32", a.device)
    rng = np.random.default_rng(0)
    trainer = LoraTrainer(sd, TrainConfig(), rng, "bench")
    trainer.set_data(images(a.size), "style_00")
    draws = Draws(rng, 2, trainer.latent_shape, trainer.num_timesteps)
    trainer.lora.attach()
    base = rss_mib()
    times = timed(lambda i: trainer.step(draws.next()), a.warmup, a.steps)
    peak = peak_rss_mib()
    return {"ours_s_per_step": min(times), "ours_peak_rss_mib": peak, "ours_train_rss_mib": peak - base}


# ---------------------------------------------------------------- reference side (diffusers + peft on PyTorch)

def part_torch(a) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if a.device == "cuda" else "cpu"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet").to(device).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae").to(device).requires_grad_(False)
    text = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder").to(device).requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    pixels = torch.from_numpy(images(a.size)).to(device)
    ids = tokenizer("style_00", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(device)
    with torch.no_grad():
        z0 = vae.encode(pixels[:1]).latent_dist.sample() * vae.config.scaling_factor
        context = text(ids)[0]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def unet_step(latents, hidden):
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
        loss = F.mse_loss(unet(noisy, t, hidden).sample.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sync()

    def script_step(i):
        with torch.no_grad():  # the script's frozen modules build no graph either
            latents = vae.encode(pixels[i % 2:i % 2 + 1]).latent_dist.sample() * vae.config.scaling_factor
            hidden = text(ids)[0]
        unet_step(latents, hidden)

    base = rss_mib()
    unet_times = timed(lambda i: unet_step(z0, context), a.warmup, a.steps)
    script_times = timed(script_step, 0, a.steps)
    peak = peak_rss_mib()
    out = {"torch_unet_step_s_per_step": min(unet_times), "torch_script_step_s_per_step": min(script_times),
           "torch_peak_rss_mib": peak, "torch_train_rss_mib": peak - base}
    if device == "cuda":
        out["torch_peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


PARTS = {"jittor": part_jittor, "torch": part_torch}


def run_part(a, python: str, part: str, size: int) -> dict:
    args = [python, __file__, "--part", part, "--model", str(a.model), "--size", str(size), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--device", a.device]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"benchmarks/train.py: part {part} at {size}px failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- memory projection

SD21_FP32_WEIGHTS_MIB = (865.9e6 + 83.7e6 + 340.4e6) * 4 / 2 ** 20  # UNet, VAE, text encoder parameters


def project(small: float, large: float, size: int, arch: str) -> dict:
    """Projected training memory of full SD 2.1 at 512 px, float32, from two measured points.

    Training memory (saved activations) is a·p + b·p² in the pixel count p: convolutions, norms and
    projections save tensors proportional to p (and to the channel width), self-attention saves
    (heads x tokens x tokens) logits/probabilities, proportional to p². Two sizes give a and b. Going
    from `half` to SD 2.1 doubles the widths (a x2) and doubles the heads at the two lower attention
    levels; the top level (tokens = p/64, 16x the tokens² of the next) keeps 5 heads, so b grows by
    (1 + 2/16 + 2/256) / (1 + 1/16 + 1/256) = 1.06. Weights (fp32 UNet, VAE, text encoder) are added.
    """
    p1, p2 = (size // 2) ** 2, size ** 2
    b = (large - small * p2 / p1) / (p2 * p2 - p1 * p2)
    a = (small - b * p1 * p1) / p1
    if arch == "half":
        a, b = 2 * a, b * (1 + 2 / 16 + 2 / 256) / (1 + 1 / 16 + 1 / 256)
    p = 512 ** 2
    activations = a * p + b * p * p
    return {"projected_sd21_512_train_mib": activations, "projected_sd21_512_attention_mib": b * p * p,
            "projected_sd21_512_total_mib": activations + SD21_FP32_WEIGHTS_MIB}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--model", help="a diffusers folder (default: a random SD-2.1-shaped one)")
    p.add_argument("--arch", choices=("sd21", "half"), help="random model's shapes (default: sd21 on a GPU, half on a CPU)")
    p.add_argument("--size", type=int, help="training resolution (default 512 on a GPU, 256 on a CPU)")
    p.add_argument("--steps", type=int, default=3, help="timed steps; the figure is the fastest")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--project", action="store_true", help="also measure at half the size for the memory projection")
    p.add_argument("--torch-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jstyleid-bench")
    p.add_argument("--device")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        print(json.dumps(PARTS[a.part](a)))
        return

    from common.jittor_env import gpu_present
    gpu = gpu_present()
    a.device = a.device or ("cuda" if gpu else "cpu")
    a.size = a.size or (512 if gpu else 256)
    a.arch = a.arch or ("sd21" if gpu else "half")
    if a.model is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from stages import write_random_model  # the SD 2.1 configs live there until they move to common/devkit
        a.model = a.workdir / f"random-{a.arch}"
        write_random_model(a.model, a.arch)
    figures = {}
    for python, part in ((sys.executable, "jittor"), (a.torch_python, "torch")):
        result = run_part(a, python, part, a.size)
        figures.update(result)
        print(f"{part}: {result}", file=sys.stderr, flush=True)
    figures["ours_vs_torch_unet_step"] = figures["ours_s_per_step"] / figures["torch_unet_step_s_per_step"]
    figures["ours_vs_torch_script_step"] = figures["ours_s_per_step"] / figures["torch_script_step_s_per_step"]
    if a.project:
        small = run_part(a, sys.executable, "jittor", a.size // 2)["ours_train_rss_mib"]
        figures["ours_train_rss_mib_half_size"] = small
        figures.update(project(small, figures["ours_train_rss_mib"], a.size, a.arch))
    setup = {"device": a.device, "model": f"random {a.arch} (SD 2.1 shapes)" if "random-" in str(a.model) else str(a.model),
             "size": a.size, "batch": 1, "rank": 4, "dtype": "float32", "steps": a.steps, "warmup": a.warmup,
             "cpu_count": os.cpu_count()}
    width = max(map(len, figures))
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    print(f"{'figure':<{width}}  value")
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}")
    if a.json:
        a.json.write_text(json.dumps({"setup": setup, **figures}, indent=1))


if __name__ == "__main__":
    main()
