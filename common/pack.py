"""One LoRA packed over many styles (`train.pack`, docs/training.md): the one train job every style's
generation waits for, the styles it trains on, and where its LoRA lies.

Jittor-free: the stage graph declares the job from these, and `common.style_files.lora_folder` resolves
every style's LoRA to the packed one.
"""
from pathlib import Path
from typing import List, Tuple

PACK_DIR = "pack"  # inside lora.dir: LORA_DIR/pack/pytorch_lora_weights.*
PACK_GROUP = "pack"  # the queue group its one train job is filed under


def pack_styles(dataset) -> List[str]:
    """Every style folder's name, sorted (hidden folders skipped), as `common.dataset.read_dataset` lists
    them: the styles the packed LoRA trains on, in their round-robin order."""
    root = Path(dataset)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []


def pack_job(config, style) -> Tuple[str, List[dict]]:
    """(group, payloads) of the train stage with `train.pack`: one job, whichever style asks."""
    return PACK_GROUP, [{}]
