"""Train one style's DreamBooth LoRA, without the queue.

    python -m producer.train --config C --style-dir DATASET/STYLE --out style/style_STYLE

Trains on every image in STYLE/images/ with the config's `train:` settings (JDiffusion's train_all.sh
values by default) and writes OUT/pytorch_lora_weights.bin and OUT/loss_curve.png. Checkpoints go to
OUT/.checkpoint/ (or --checkpoint-dir): rerun the same command after a crash and it resumes from the
last one. An existing LoRA is kept and the run skipped. With `train.prior` the class images are read from
--class-dir (default: where the launcher's prior stage writes them, LORA_DIR/prior/GROUP/; docs/training.md).
"""
import argparse
import sys
from pathlib import Path

from common.config import ConfigError, load_config
from common.prior import class_folder, class_group, class_images, class_prompt
from common.style_files import training_images
from producer.train_files import LORA_BIN


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the run's YAML config (model, train settings)")
    parser.add_argument("--style-dir", required=True, type=Path, help="a style folder holding images/")
    parser.add_argument("--out", required=True, type=Path, help="the LoRA's folder, e.g. style/style_00")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="default: OUT/.checkpoint")
    parser.add_argument("--class-dir", type=Path, default=None,
                        help="with train.prior: the class images (default: the launcher's, under lora.dir/prior/)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    args = parser.parse_args(argv)
    lora_file = args.out / LORA_BIN
    try:
        config = load_config(args.config)
        if lora_file.is_file():
            print(f"train: {lora_file} exists; delete it to train again")
            return 0
        training_images(args.style_dir)
        class_dir = args.class_dir
        if config.train.prior is not None:
            class_dir = class_dir or class_folder(config, class_group(class_prompt(config, args.style_dir.name)))
            class_images(class_dir, config.train.prior.images)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from common.jittor_env import gpu_present
    device = args.device or ("cuda" if gpu_present() else "cpu")
    from producer.train_loop import TrainingDiverged
    from producer.train_stage import TrainStage
    try:
        stage = TrainStage(config, device)
        stage.train(args.style_dir.name, args.style_dir, lora_file, args.checkpoint_dir or args.out / ".checkpoint",
                    class_dir=class_dir)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:  # unreadable images or model files
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
