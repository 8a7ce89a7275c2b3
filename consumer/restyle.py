"""Restyle a folder of existing images with one style, without the producer or the queue.

    python -m consumer.restyle --config C --style-dir DATASET/STYLE --content-dir DIR --out DIR

Each content image (any size; centre-cropped and resized to consumer.size, by default producer.size) is
VAE-encoded and stylized with the style's image (consumer.style_image or the first in STYLE/images/), the
same code as the queue's consumer stage; each result is written atomically to OUT/<content name>.png, and
existing results are skipped, so an interrupted run resumes.
"""
import argparse
import sys
from pathlib import Path

from common.config import ConfigError, load_config
from common.stage import Task
from common.style_files import IMAGE_SUFFIXES

NO_LATENT = Path("/nonexistent/jstyleid-no-latent.npy")  # outside images have no producer latent


def restyle_tasks(style_dir: Path, content_dir: Path, out_dir: Path) -> list:
    """One Task per content image still missing its output, in sorted order."""
    contents = sorted(p for p in content_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not contents:
        raise FileNotFoundError(f"{content_dir}: no content images ({', '.join(IMAGE_SUFFIXES)}); "
                                "fix --content-dir")
    return [Task(id=p.stem, style=style_dir.name, prompt="", name=p.stem, seed=0, style_dir=style_dir,
                 files={"content_png": p, "content_latent": NO_LATENT, "output_png": out_dir / f"{p.stem}.png"})
            for p in contents if not (out_dir / f"{p.stem}.png").is_file()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer.restyle", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the run's YAML config (model, consumer section)")
    parser.add_argument("--style-dir", required=True, type=Path, help="a style folder holding images/")
    parser.add_argument("--content-dir", required=True, type=Path, help="a folder of content images")
    parser.add_argument("--out", required=True, type=Path, help="where the stylized PNGs go")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if not (args.style_dir / "images").is_dir():
            raise FileNotFoundError(f"{args.style_dir / 'images'}: not a folder; --style-dir must hold images/")
        if not args.content_dir.is_dir():
            raise FileNotFoundError(f"{args.content_dir}: not a folder; fix --content-dir")
        tasks = restyle_tasks(args.style_dir, args.content_dir, args.out)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not tasks:
        print(f"restyle: every output already exists in {args.out}")
        return 0
    from common.jittor_env import gpu_present
    device = args.device or ("cuda" if gpu_present() else "cpu")
    from consumer.stage import ConsumerStage
    stage = ConsumerStage(config, device)
    batch = config.consumer.batch
    for start in range(0, len(tasks), batch):
        chunk = tasks[start:start + batch]
        stage.run(chunk, beat=lambda phase: None)
        print(f"restyle: {min(start + batch, len(tasks))}/{len(tasks)} written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
