"""The score's speed: images per second of each metric and of the whole score, ours (Jittor) against the
checker's libraries on PyTorch in the same run (benchmarks/score_reference.py in --torch-python), on the
real architectures with random weights (docs/score.md). The ratio is our time over PyTorch's (target <= 1).

    python benchmarks/score.py --images 8 --refs 4 --json benchmarks/results/score_cpu.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import report  # noqa: E402
from common.score.files import INCEPTION_FILE, SQUEEZENET_FILE  # noqa: E402


def write_files(work: Path, small: bool) -> dict:
    """The six metrics' files (random weights, the checker's formats) and the demo's word list."""
    from common.devkit.demo import DEMO_WORDS
    from common.devkit.score_weights_cnn import write_inception, write_lpips_linear, write_squeezenet
    from common.devkit.score_weights_iqa import write_clip_rn50, write_clip_tokenizer
    from common.devkit.score_weights_vit import write_clip, write_dino
    hub = work / "torch" / "hub" / "checkpoints"
    files = {"dino": work / "dino", "clip": work / "clip", "fid_inception": hub / INCEPTION_FILE,
             "lpips_backbone": hub / SQUEEZENET_FILE, "lpips_linear": work / "squeeze.pth",
             "clip_iqa": work / "RN50.pt", "clip_iqa_tokenizer": work / "tokenizer",
             "clip_r_prompts": work / "words.txt", "torch_home": work / "torch"}
    if not (work / "files.json").exists():
        hub.mkdir(parents=True, exist_ok=True)
        write_dino(files["dino"], small=small)
        write_clip(files["clip"], small=small)
        write_inception(files["fid_inception"])
        write_squeezenet(files["lpips_backbone"])
        write_lpips_linear(files["lpips_linear"])
        write_clip_rn50(files["clip_iqa"], small=small)
        write_clip_tokenizer(files["clip_iqa_tokenizer"])
        files["clip_r_prompts"].write_text("\n".join(DEMO_WORDS * 18))  # about the checker's 216 lines
        (work / "files.json").write_text(json.dumps({**{k: str(v) for k, v in files.items()}, "small": small}))
    elif json.loads((work / "files.json").read_text()).get("small") != small:
        sys.exit(f"{work} holds the files of {'the real' if small else 'small'} networks: use another --workdir")
    return files


def write_images(work: Path, n: int, m: int, size: int) -> tuple:
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for kind, count in (("gen", n), ("ref", m)):
        (work / kind).mkdir(exist_ok=True)
        for i in range(count):
            path = work / kind / f"{['Cat', 'Tree', 'House', 'River'][i % 4]}{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    gens, refs = paths[:n], paths[n:]
    (work / "images.json").write_text(json.dumps([[str(p) for p in gens], [str(p) for p in refs]]))
    return gens, refs


def ours(files: dict, gens, refs) -> dict:
    """Seconds of each metric on `gens` (against `refs` where it compares), after one warm-up call."""
    from types import SimpleNamespace
    from common.jittor_env import use_device
    from common.score.hist import hist_score
    from common.score.scorer import Scorer
    use_device("cpu")
    scorer = Scorer(SimpleNamespace(**files))
    calls = {"dino": lambda: scorer.dino.embed(gens), "clip_r": lambda: scorer.clip_r.hits(gens, scorer.words),
             "fid": lambda: scorer.inception.features(gens), "lpips": lambda: scorer.lpips.distance(gens, refs),
             "hist": lambda: hist_score(gens, refs), "clip_iqa": lambda: scorer.clip_iqa.scores(gens)}
    out = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        call()
        out[name] = time.perf_counter() - start
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8, help="generated images (512 px)")
    p.add_argument("--refs", type=int, default=4, help="reference images (512 px)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--small", action="store_true", help="small DINOv2/CLIP/RN50 configs (a quick check)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-python", default=os.environ.get("SCORE_TORCH_PYTHON", "/work/venv-score/bin/python"))
    p.add_argument("--workdir", help="keep the weight files here between runs (default: a temporary folder)")
    p.add_argument("--json")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="score_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    files = write_files(work, args.small)
    gens, refs = write_images(work, args.images, args.refs, args.size)
    mine = ours({k: Path(v) for k, v in files.items() if k != "torch_home"}, gens, refs)
    proc = subprocess.run([args.torch_python, str(ROOT / "benchmarks" / "score_reference.py"), str(work),
                           str(args.threads)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the PyTorch side failed: {proc.stderr.strip().splitlines()[-1:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = {}
    for name, seconds in mine.items():
        figures[f"{name} ours img/s"] = args.images / seconds
        if name in theirs:
            figures[f"{name} pytorch img/s"] = args.images / theirs[name]
            figures[f"{name} ratio (our time / pytorch's)"] = seconds / theirs[name]
    common = [k for k in mine if k in theirs]
    figures["whole score ours img/s"] = args.images / sum(mine[k] for k in common)
    figures["whole score pytorch img/s"] = args.images / sum(theirs[k] for k in common)
    figures["whole score ratio"] = sum(mine[k] for k in common) / sum(theirs[k] for k in common)
    report({"images": args.images, "refs": args.refs, "size": args.size, "small": args.small,
            "threads": args.threads, "metrics_compared": ",".join(common)}, figures, args.json)


if __name__ == "__main__":
    main()
