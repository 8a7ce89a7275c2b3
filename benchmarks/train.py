"""LoRA training speed and memory: seconds per training step and peak RSS, ours against diffusers + peft.

    .venv/bin/python benchmarks/train.py --json train.json [--torch-python .venv-ref/bin/python] [--project]
        [--recipe NAME] [--rows jdiffusion,text_encoder,targets,batch2]

Both sides train the same model folder (random weights with SD 2.1's shapes), at the same resolution,
with the same recipe (`--recipe`, RECIPES below; default JDiffusion's: batch 1, rank-4 LoRA on every
to_q/to_k/to_v/to_out.0), AdamW, float32, each in its own worker process
(torch and Jittor never share one; peak RSS is per side) with the same thread count. The workers take
turns step by step, one computing while the other waits, so a busy shared machine slows both alike;
`ours_vs_torch_*` is the median of the per-pair ratios.
- `ours_s_per_step` / `torch_unet_step_s_per_step`: the fastest step after --warmup ones (Jittor compiles
  on the first). Ours and `torch_unet_step` do the same work (UNet forward + backward + AdamW on prepared
  inputs); `torch_script_step` adds what diffusers' and JDiffusion's scripts also run every step (a VAE
  encode of the image and a text encode of the prompt; we encode both once). The script steps run after
  ours have ended, not in turns with them, so `ours_vs_torch_script_step` is a ratio of two fastest steps
  taken minutes apart, less robust to a busy machine than the per-pair median. `*_cpu_*`: process CPU seconds.
- `*_peak_rss_mib`, and `*_train_rss_mib`: peak minus the resident size once the model is loaded (what
  training adds: saved activations, the allocator's cache).
- `--project`: `ours_train_var_mib`, the live Var bytes training adds over the weights at its peak
  (Jittor's memory profiler, one extra step), at the size and at half of it, and from the two points
  the projected memory of training full SD 2.1 at 512 px in float32 on a GPU (see `project()`).
- `--rows`: one short run per recipe named (each option that costs time), its figures prefixed `NAME/`,
  ours against diffusers + peft with the same option.

CPU default: `--arch half` (SD 2.1's layout, every width halved; `benchmarks/stages.py`) at 256 px.
GPU: `--arch sd21 --size 512`.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import report  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0


def images(size: int):
    import numpy as np
    return np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)


def latents(size: int):
    import numpy as np
    return np.random.default_rng(1).standard_normal((2, 4, size // 8, size // 8)).astype(np.float32)


# name: the train: settings of a recipe (a path: a recipe file's train: section)
RECIPES = {"jdiffusion": {}, "text_encoder": {"text_encoder": {"rank": 4}},
           "targets": {"targets": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
                                   "proj_out", "conv1", "conv2", "conv_shortcut"]},
           "batch2": {"batch_size": 2}, "strong": "configs/recipes/strong.yaml"}


def recipe(name: str):
    """The TrainConfig of a recipe (common.config is Jittor- and torch-free: both workers read it)."""
    from common.config import load_config
    settings = RECIPES[name]
    if isinstance(settings, str):
        return load_config(ROOT / settings).train
    return load_config(overrides={f"train.{k}": v for k, v in settings.items()}).train


def serve(commands: dict, base_rss: float) -> None:
    """Answer one JSON line per command read from stdin: a step's {"wall", "cpu"}, or what a command returns."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "done":
            peak = peak_rss_mib()
            print(json.dumps({"peak_rss_mib": peak, "train_rss_mib": peak - base_rss}), flush=True)
            return
        t0, c0 = time.perf_counter(), time.process_time()
        result = commands[name]()
        print(json.dumps(result or {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}), flush=True)


# ---------------------------------------------------------------- our side (Jittor)

def worker_jittor(a) -> None:
    import numpy as np

    from common.jittor_env import load_jittor
    from common.sd.pipeline import StableDiffusion
    from producer.train_data import Draws
    from producer.train_loop import LoraTrainer
    jt = load_jittor()
    sd = StableDiffusion.load(a.model, "float32", a.device)
    rng = np.random.default_rng(0)
    train = recipe(a.recipe)
    trainer = LoraTrainer(sd, train, rng, "bench")
    # Posteriors as set_data would make them, without running the VAE here: its activations would sit in
    # the allocator's cache and hide what training itself needs (the VAE is not timed either).
    trainer.mean, trainer.std = latents(a.size), np.full((2, 4, a.size // 8, a.size // 8), 0.1, np.float32)
    trainer.prompt_index, trainer.ids = np.zeros(2, np.int64), sd.tokenizer(["style_00"])
    if not trainer.trains_text_encoder:
        trainer.context = sd.encode_prompt(["style_00"]).numpy()
    draws = Draws(rng, 2, trainer.latent_shape, trainer.num_timesteps, offset=train.noise_offset > 0)
    samples = trainer.samples_per_step
    trainer.lora.attach()
    weights = sum(int(np.prod(p.shape)) * 4 for m in (sd.unet, sd.vae, sd.text_encoder) for p in m.parameters())

    def memory():  # one step under Jittor's memory profiler: live Var bytes at the peak, less the weights
        jt.flags.profile_memory_enable = 1
        trainer.step([draws.next() for _ in range(samples)])
        peak = int(jt.get_max_memory_info().split("[!@#div1!@#]")[0])
        jt.flags.profile_memory_enable = 0
        return {"train_var_mib": (peak - weights) / 2 ** 20}

    def step():
        trainer.step([draws.next() for _ in range(samples)])

    serve({"step": step, "memory": memory}, rss_mib())


# ---------------------------------------------------------------- reference side (diffusers + peft on PyTorch)

def worker_torch(a) -> None:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTokenizer
    torch.set_num_threads(a.threads)
    device = "cuda" if a.device == "cuda" else "cpu"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet").to(device).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae").to(device).requires_grad_(False)
    text = text_encoder(Path(a.model) / "text_encoder").to(device).requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    train = recipe(a.recipe)
    unet.add_adapter(LoraConfig(r=train.rank, lora_alpha=train.alpha or train.rank, init_lora_weights="gaussian",
                                target_modules=list(train.targets)))
    te = train.text_encoder
    if te is not None:  # as train_dreambooth_lora.py --train_text_encoder adds it
        text.add_adapter(LoraConfig(r=te.rank, lora_alpha=te.rank, init_lora_weights="gaussian",
                                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    groups = [{"params": [p], "lr": 1e-4 * (train.lr_ratio_b if "lora_B" in n else 1.0)}
              for model in (unet, text) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    batch = train.batch_size * train.gradient_accumulation  # one micro-batch of all (same work per step)
    pixels = torch.from_numpy(images(a.size)).to(device)
    ids = tokenizer("style_00", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(device).repeat(batch, 1)
    z0 = torch.from_numpy(latents(a.size)[[i % 2 for i in range(batch)]]).to(device)
    with torch.no_grad():
        context = text(ids)[0]
    state = {"image": 0}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def unet_step(latents_=z0, hidden=context):
        if te is not None:  # the text encoder's LoRA trains: encode with its graph every step
            hidden = text(ids)[0]
        noise = torch.randn_like(latents_)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents_.shape[0],), device=device)
        noisy = scheduler.add_noise(latents_, noise, t)
        target = scheduler.get_velocity(latents_, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
        loss = F.mse_loss(unet(noisy, t, hidden).sample.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sync()

    def script_step():
        i = state["image"] = 1 - state["image"]
        with torch.no_grad():  # the script's frozen modules build no graph either
            latents_ = vae.encode(pixels[[(i + j) % 2 for j in range(batch)]]).latent_dist.sample() \
                * vae.config.scaling_factor
            hidden = text(ids)[0]
        unet_step(latents_, hidden)

    def gpu_peak():
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None}

    serve({"unet": unet_step, "script": script_step, "gpu_peak": gpu_peak}, rss_mib())


def text_encoder(folder: Path):
    """transformers' CLIPTextModel from a folder whose safetensors carry no metadata (from_pretrained
    insists on it; the random benchmark model is written without)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


WORKERS = {"jittor": worker_jittor, "torch": worker_torch}


class Worker:
    """A worker process; `ask(command)` sends one command and waits for its JSON answer."""

    def __init__(self, a, python: str, side: str, size: int):
        args = [python, __file__, "--worker", side, "--model", str(a.model), "--size", str(size),
                "--device", a.device, "--threads", str(a.threads), "--recipe", a.recipe]
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
        self.side = side
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, cwd=ROOT, env=env)
        self.read()

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            sys.exit(f"benchmarks/train.py: the {self.side} worker failed:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> dict:
        result = self.ask("done")
        self.process.wait()
        return result


# ---------------------------------------------------------------- memory projection

SD21_FP32_WEIGHTS_MIB = (865.9e6 + 83.7e6 + 340.4e6) * 4 / 2 ** 20  # UNet, VAE, text encoder parameters


def project(small: float, large: float, size: int, arch: str) -> dict:
    """Projected memory of training full SD 2.1 at 512 px in float32 on a GPU, from two measured points.

    `small`/`large`: the live Var bytes training adds over the weights (Jittor's memory profiler) at half
    the size and at `size`. No attention matrix is kept (common.sd.attention_grad), so what training
    keeps is c + a·p in the pixel count p: saved inputs of norms, activations and projections, proportional
    to p and to the channel widths; two sizes give c and a. From `half` to SD 2.1 the widths double
    (x2). The GPU path recomputes one attention's probabilities at a time in the backward pass: a
    transient 3 x heads x N² float32 (P, dP, dS) at the top level, N = p/64 tokens, 5 heads. The fp32
    UNet, VAE and text encoder weights are added.
    """
    p1, p2 = (size // 2) ** 2, size ** 2
    a = (large - small) / (p2 - p1)
    c = large - a * p2
    width = 2 if arch == "half" else 1
    p = 512 ** 2
    kept = width * (c + a * p)
    transient = 3 * 5 * (p / 64) ** 2 * 4 / 2 ** 20
    return {"projected_sd21_512_kept_mib": kept, "projected_sd21_512_attention_transient_mib": transient,
            "projected_sd21_512_total_mib": kept + transient + SD21_FP32_WEIGHTS_MIB}


def measure(a) -> dict:
    """One recipe's figures (`a.recipe`): step times of both sides, memory, and with --project the projection."""
    ours, ref = Worker(a, sys.executable, "jittor", a.size), Worker(a, a.torch_python, "torch", a.size)
    for _ in range(a.warmup):
        ours.ask("step"), ref.ask("unet")
    pairs = [(ours.ask("step"), ref.ask("unet")) for _ in range(a.steps)]
    figures = {
        "ours_s_per_step": min(o["wall"] for o, _ in pairs),
        "torch_unet_step_s_per_step": min(r["wall"] for _, r in pairs),
        "ours_cpu_s_per_step": min(o["cpu"] for o, _ in pairs),
        "torch_unet_step_cpu_s_per_step": min(r["cpu"] for _, r in pairs),
        "ours_vs_torch_unet_step": statistics.median(o["wall"] / r["wall"] for o, r in pairs),
        "ours_vs_torch_unet_step_cpu": statistics.median(o["cpu"] / r["cpu"] for o, r in pairs),
    }
    if a.project:
        figures["ours_train_var_mib"] = ours.ask("memory")["train_var_mib"]
    end = ours.close()
    figures.update(ours_peak_rss_mib=end["peak_rss_mib"], ours_train_rss_mib=end["train_rss_mib"])
    script = [ref.ask("script") for _ in range(a.steps)]
    figures["torch_script_step_s_per_step"] = min(s["wall"] for s in script)
    figures["ours_vs_torch_script_step"] = figures["ours_s_per_step"] / figures["torch_script_step_s_per_step"]
    gpu_peak = ref.ask("gpu_peak")["peak_gpu_mib"]
    end = ref.close()
    figures.update(torch_peak_rss_mib=end["peak_rss_mib"], torch_train_rss_mib=end["train_rss_mib"])
    if gpu_peak is not None:
        figures["torch_peak_gpu_mib"] = gpu_peak
    if a.project:
        small = Worker(a, sys.executable, "jittor", a.size // 2)
        small.ask("step")
        figures["ours_train_var_mib_half_size"] = small.ask("memory")["train_var_mib"]
        small.close()
        figures.update(project(figures["ours_train_var_mib_half_size"], figures["ours_train_var_mib"], a.size, a.arch))
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--model", help="a diffusers folder (default: a random SD-2.1-shaped one)")
    p.add_argument("--arch", choices=("sd21", "half"), help="random model's shapes (default: sd21 on a GPU, half on a CPU)")
    p.add_argument("--size", type=int, help="training resolution (default 512 on a GPU, 256 on a CPU)")
    p.add_argument("--steps", type=int, default=4, help="timed step pairs")
    p.add_argument("--warmup", type=int, default=2, help="untimed step pairs first (compilation)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of both sides")
    p.add_argument("--project", action="store_true", help="also the SD 2.1 512 px memory projection")
    p.add_argument("--recipe", default="jdiffusion", choices=sorted(RECIPES), help="the train: settings of both sides")
    p.add_argument("--rows", help="comma-separated recipes: one row of figures each")
    p.add_argument("--torch-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "jstyleid-bench")
    p.add_argument("--device")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        WORKERS[a.worker](a)
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

    if a.rows:
        figures = {}
        for name in a.rows.split(","):
            a.recipe = name
            figures.update({f"{name}/{k}": v for k, v in measure(a).items()})
    else:
        figures = measure(a)
    setup = {"device": a.device, "model": f"random {a.arch} (SD 2.1 shapes)" if "random-" in str(a.model) else str(a.model),
             "size": a.size, "recipe": a.rows or a.recipe, "dtype": "float32", "steps": a.steps,
             "warmup": a.warmup, "threads": a.threads, "cpu_count": os.cpu_count()}
    report(setup, figures, a.json)


if __name__ == "__main__":
    main()
