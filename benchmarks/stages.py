"""Stage costs: producer and consumer seconds per image, style inversion, peak memory, and a per-image design.

    .venv/bin/python benchmarks/stages.py --json stages.json

Each measurement runs in its own process (its peak RSS is that stage's alone). The reference is the plain
per-image consumer design, run here in the same session: a fresh process per content image that loads the
model, re-inverts the style, and runs every UNet call on a guidance-doubled batch (same steps).
`consumer_speedup_vs_per_image` = its seconds per image / ours with the style cached, batch 4.

On a GPU: SD 2.1's architecture with random weights (or the real model when `--model` names one), 512x512
float16, 25 producer and 50 consumer steps (fewer with --gen-steps/--sty-steps; the `*_per_step` figures
divide by the step count, fixed costs included). On a CPU (2 cores: the full SD 2.1 UNet takes ~8 s per
call at 256x256): `--arch half` (SD 2.1's layout with every width halved, heads 64 wide, a 12-layer
512-wide text encoder) at 256x256 float32, 5 steps each way; `--arch tiny` is the test model (a smoke run).
Random weights cost the same time as trained ones; Jittor compiles each new shape once, so every part
warms up first. Every timing ends by waiting for the device (common.jittor_env.wait_device).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import report  # noqa: E402
from common.devkit.sd21_configs import TEXT_ENCODER, UNET, VAE  # noqa: E402  (plain dicts, no Jittor)


def arch_configs(arch: str):
    """SD 2.1's component configs; "half" halves every width (heads stay 64 wide) for slow machines."""
    unet, vae, text = dict(UNET), dict(VAE), dict(TEXT_ENCODER)
    if arch == "half":
        unet.update(block_out_channels=[160, 320, 640, 640], attention_head_dim=[5, 5, 10, 10],
                    cross_attention_dim=512)
        vae.update(block_out_channels=[64, 128, 256, 256])
        text.update(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    return unet, vae, text


def write_random_model(folder: Path, arch: str, weight_dtype: str = "float32"):
    """A diffusers folder with SD-2.1-shaped components and random weights (Jittor's default init, seed 0),
    stored as `weight_dtype` (loading casts them; float16 halves the writing on a GPU machine)."""
    if (folder / "model_index.json").is_file():
        return
    from common.devkit.tiny_model import write_tiny_model
    if arch == "tiny":
        write_tiny_model(folder, lora_styles=())
        return
    from safetensors.numpy import save_file

    from common.jittor_env import load_jittor
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    jt = load_jittor()
    jt.set_global_seed(0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tiny_model(tmp, lora_styles=())  # tokenizer, scheduler and model_index; components replaced below
    unet_cfg, vae_cfg, text_cfg = arch_configs(arch)
    for sub, cls, cfg, weights in (("unet", UNet2DConditionModel, unet_cfg, "diffusion_pytorch_model.safetensors"),
                                   ("vae", AutoencoderKL, vae_cfg, "diffusion_pytorch_model.safetensors"),
                                   ("text_encoder", CLIPTextModel, text_cfg, "model.safetensors")):
        for old in (tmp / sub).glob("*"):
            old.unlink()
        (tmp / sub / "config.json").write_text(json.dumps(cfg, indent=1))
        state = {k: v.numpy().astype(weight_dtype) for k, v in cls(cfg).state_dict().items()}
        save_file(state, str(tmp / sub / weights))
        del state
    shutil.rmtree(tmp / "loras", ignore_errors=True)
    tmp.rename(folder)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory(prefix: str) -> dict:
    """Peak RSS, and on CUDA Jittor's GPU pool (its allocator keeps what it took: the pool is its peak)."""
    out = {f"{prefix}peak_rss_mb": peak_rss_mb()}
    jt = jittor()
    if jt.flags.use_cuda:
        out[f"{prefix}gpu_pool_mb"] = jt.get_mem_info().total_cuda_used / 2 ** 20
    return out


def drawn_image(size: int, seed: int):
    """A deterministic colourful picture (the demo's styles) at size x size."""
    from common.devkit.demo import dots, stripes
    return (stripes if seed % 2 == 0 else dots)(seed, size)


# ---------------------------------------------------------------- parts (each in its own process)

def part_producer(a) -> dict:
    from common.jittor_env import wait_device
    from producer.generate import generate
    sd = load_model(a)
    prompts = ["a dolphin", "a lighthouse", "a mountain", "a bicycle"]

    def run(batch, steps):
        t0 = time.perf_counter()
        generate(sd, prompts[:batch], list(range(batch)), size=a.size, steps=steps, guidance=7.5)
        wait_device()
        return time.perf_counter() - t0

    run(1, 1), run(4, 1)  # compile every shape once
    return {"producer_s_per_image_b1": best(a, lambda: run(1, a.gen_steps)),
            "producer_s_per_image_b4": best(a, lambda: run(4, a.gen_steps)) / 4, **memory("producer_")}


def styleid(sd, a, steps):
    from consumer.styleid import StyleID
    from common.config import ConsumerConfig
    c = ConsumerConfig()
    jt = jittor()
    with jt.no_grad():
        cond = sd.encode_prompt([""])
    return StyleID(sd.unet, sd.scheduler, cond, steps=steps, gamma=c.gamma, temperature=c.temperature,
                   layers=c.layers, adain=c.adain)


def latents(sd, images):
    jt = jittor()
    import numpy as np
    with jt.no_grad():
        z = sd.encode_images(np.stack(images))
    return z.float32()


def part_consumer(a) -> dict:
    from common.jittor_env import wait_device
    jt = jittor()
    sd = load_model(a)
    style = latents(sd, [drawn_image(a.size, 0)])
    contents = latents(sd, [drawn_image(a.size, s) for s in range(1, 5)])

    def run(engine, batch, cached):
        t0 = time.perf_counter()
        with jt.no_grad():
            feats = cached or engine.invert_style(style)
            if batch:
                sd.decode_latents(engine.stylize(contents[:batch], feats))
        wait_device()
        return time.perf_counter() - t0, feats

    warm = styleid(sd, a, 1)
    feats = run(warm, 0, None)[1]
    run(warm, 1, feats), run(warm, 4, feats)
    engine = styleid(sd, a, a.sty_steps)
    inversion, feats = min((run(engine, 0, None) for _ in range(a.repeat)), key=lambda r: r[0])
    b1 = best(a, lambda: run(engine, 1, feats)[0])
    b4 = best(a, lambda: run(engine, 4, feats)[0]) / 4
    return {"style_inversion_s": inversion, "consumer_s_per_image_b1_cached": b1,
            "consumer_s_per_image_b4_cached": b4, **memory("consumer_")}


def part_per_image(a) -> dict:
    """One content image the plain per-image way: load, invert the style, guidance-doubled batches."""
    from common.jittor_env import wait_device
    jt = jittor()
    t0 = time.perf_counter()
    sd = load_model(a)
    load = time.perf_counter() - t0
    engine = styleid(sd, a, a.sty_steps)
    style = latents(sd, [drawn_image(a.size, 0)])
    content = latents(sd, [drawn_image(a.size, 1 + a.index % 4)])
    with jt.no_grad():
        feats = engine.invert_style(jt.concat([style, style], dim=0))
        out = engine.stylize(jt.concat([content, content], dim=0), feats)[:1]
        sd.decode_latents(out)
    wait_device()
    return {**memory(""), "load_s": load, "work_s": time.perf_counter() - t0 - load}


def best(a, measure) -> float:
    """The fastest of `--repeat` measurements: other processes on a shared machine only ever add time."""
    return min(measure() for _ in range(a.repeat))


PARTS = {"producer": part_producer, "consumer": part_consumer, "per-image": part_per_image}


def jittor():
    from common.jittor_env import load_jittor
    return load_jittor()


def load_model(a):
    from common.jittor_env import use_device
    from common.sd.pipeline import StableDiffusion
    use_device(a.device)
    return StableDiffusion.load(a.model, a.dtype, a.device)


def run_part(a, part: str, **extra) -> tuple:
    """Run one part in a fresh process; return (its JSON result, its wall seconds)."""
    args = [sys.executable, __file__, "--part", part, "--model", str(a.model), "--size", str(a.size),
            "--gen-steps", str(a.gen_steps), "--sty-steps", str(a.sty_steps), "--dtype", a.dtype,
            "--device", a.device, "--repeat", str(a.repeat)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"benchmarks/stages.py: part {part} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--model", help="a diffusers folder (default: a random SD-2.1-shaped one)")
    p.add_argument("--arch", choices=("sd21", "half", "tiny"), help="random model's shapes (default: sd21 on a "
                   "GPU, half on a CPU; tiny: the test model)")
    p.add_argument("--size", type=int)
    p.add_argument("--gen-steps", type=int)
    p.add_argument("--sty-steps", type=int)
    p.add_argument("--per-image", type=int, default=2, help="content images timed for the per-image design "
                   "(1: no warm-up process, so the figure includes compiling)")
    p.add_argument("--repeat", type=int, default=2, help="timings are the fastest of this many runs")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jstyleid-bench")
    p.add_argument("--dtype"), p.add_argument("--device")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        print(json.dumps(PARTS[a.part](a)))
        return

    from common.jittor_env import gpu_present
    gpu = gpu_present()
    a.device = a.device or ("cuda" if gpu else "cpu")
    a.dtype = a.dtype or ("float16" if gpu else "float32")
    a.size = a.size or (512 if gpu else 256)
    a.gen_steps = a.gen_steps or (25 if gpu else 5)
    a.sty_steps = a.sty_steps or (50 if gpu else 5)
    a.arch = a.arch or ("sd21" if gpu else "half")
    if a.model is None:
        weight_dtype = "float16" if a.dtype == "float16" else "float32"
        a.model = a.workdir / f"random-{a.arch}-{weight_dtype}"
        t0 = time.perf_counter()
        write_random_model(a.model, a.arch, weight_dtype)
        print(f"model: random {a.arch} weights in {a.model} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    model_name = str(a.model) if "random-" not in str(a.model) else f"random {a.arch} (SD 2.1 shapes)"

    figures = {}
    for part in ("producer", "consumer"):
        result, _ = run_part(a, part)
        figures.update(result)
        print(f"{part}: {result}", file=sys.stderr, flush=True)
        if a.json:  # a run cut short keeps the parts it finished
            a.json.write_text(json.dumps({"complete": False, **figures}, indent=1))
    if a.per_image > 1:  # a smoke run's single process keeps its compile time
        run_part(a, "per-image", sty_steps=1)  # compiles the doubled-batch shapes
    walls, results = [], []
    for i in range(a.per_image):
        result, wall = run_part(a, "per-image", index=i)
        walls.append(wall), results.append(result)
    # the fastest, as every other timing; the process wall splits into start-up (Python, Jittor), model load,
    # and the work itself (encodes, doubled inversions, decode; a fresh process also loads each kernel once)
    figures["per_image_s_per_image"] = min(walls)
    figures["per_image_load_s"] = min(r["load_s"] for r in results)
    figures["per_image_work_s"] = min(r["work_s"] for r in results)
    for key in ("peak_rss_mb", "gpu_pool_mb"):
        if key in results[0]:
            figures[f"per_image_{key}"] = max(r[key] for r in results)
    figures["consumer_speedup_vs_per_image"] = figures["per_image_s_per_image"] / figures[
        "consumer_s_per_image_b4_cached"]
    figures["consumer_speedup_vs_per_image_b1"] = figures["per_image_s_per_image"] / figures[
        "consumer_s_per_image_b1_cached"]
    for key in list(figures):  # seconds per image per step (fixed costs such as the decode spread over steps)
        steps = a.gen_steps if key.startswith("producer_s") else a.sty_steps
        if key.startswith(("producer_s_per_image", "consumer_s_per_image", "style_inversion_s")):
            figures[key.replace("_s_per_image", "_s_per_image_step").replace("inversion_s", "inversion_s_per_step")
                    ] = figures[key] / steps
    setup = {"device": a.device, "dtype": a.dtype, "model": model_name, "size": a.size,
             "producer_steps": a.gen_steps, "consumer_steps": a.sty_steps, "per_image_images": a.per_image,
             "repeat": a.repeat,
             "cpu_count": os.cpu_count()}

    report(setup, figures, a.json)


if __name__ == "__main__":
    main()
