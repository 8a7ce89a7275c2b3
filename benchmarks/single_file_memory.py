"""Peak memory while loading full-size SD 2.1 (random weights) from a single file against its diffusers folder.

The single-file reader maps keys onto one tensor read at a time (safetensors memory-mapped), so loading a
file should cost no more than loading the folder: the model plus about one tensor (docs/engine.md §13).
Writes (once, float32, about 5.2 GB each) an SD-2.1-shaped diffusers folder with random weights and its
LDM single file (common/devkit/single_file.py) under --dir, then loads each with StableDiffusion.load
(float32, CPU) in its own process and reports that process's peak resident memory (VmHWM) against its
memory before loading, the model's own bytes and the largest tensor's.

    .venv/bin/python benchmarks/single_file_memory.py --dir /tmp/sf-memory --json benchmarks/results/single_file_memory_cpu.json
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
from common.sd.model_source import ModelOptions
from common.sd.pipeline import StableDiffusion
before = status("VmRSS")
sd = StableDiffusion.load({path!r}, "float32", "cpu", ModelOptions(config={config!r}))
sizes = [v.numel() * 4 for m in (sd.unet, sd.vae, sd.text_encoder) for v in m.state_dict().values()]
print(json.dumps({{"before_bytes": before, "peak_bytes": status("VmHWM"), "model_bytes": sum(sizes),
                  "largest_tensor_bytes": max(sizes)}}))
"""


def write_folder(folder: Path) -> None:
    """SD 2.1's configs and shapes with random float32 weights (model_index.json last marks it finished)."""
    from safetensors.numpy import save_file

    from common.devkit import sd21_configs
    from common.devkit.tiny_model import MODEL_INDEX, SCHEDULER, write_tokenizer_folder
    from common.sd.clip import CLIPTextModel
    from common.sd.unet import UNet2DConditionModel
    from common.sd.vae import AutoencoderKL
    rng = np.random.default_rng(0)
    built = {"unet": (UNet2DConditionModel, sd21_configs.UNET, "diffusion_pytorch_model.safetensors"),
             "vae": (AutoencoderKL, sd21_configs.VAE, "diffusion_pytorch_model.safetensors"),
             "text_encoder": (CLIPTextModel, sd21_configs.TEXT_ENCODER, "model.safetensors")}
    for name, (cls, config, filename) in built.items():
        shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(config))
        save_file({k: (rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()},
                  str(folder / name / filename))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    write_tokenizer_folder(folder / "tokenizer", pad_token="!")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))


def measure(path: Path, config: Path) -> dict:
    code = _CHILD.format(root=str(ROOT), path=str(path), config=str(config))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/sf-memory", help="where the random-weight model is written")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    work = Path(args.dir)
    folder, single = work / "sd21-random", work / "v2-1_768-random.safetensors"
    if not (folder / "model_index.json").is_file():
        write_folder(folder)
    if not single.is_file():
        from common.devkit.single_file import write_single_file
        write_single_file(folder, single)
    result = {"folder": measure(folder, folder), "single_file": measure(single, folder)}
    for side in result.values():
        side["extra_over_model_bytes"] = side["peak_bytes"] - side["before_bytes"] - side["model_bytes"]
    gib = {k: {m: round(v / 2**30, 3) for m, v in r.items()} for k, r in result.items()}
    print(json.dumps({"GiB": gib}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"bytes": result, "GiB": gib, "dtype": "float32", "device": "cpu",
                                               "file_bytes": single.stat().st_size}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
