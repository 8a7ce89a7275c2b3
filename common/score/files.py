"""Where the score's files are: the `eval:` section's paths, else where the checker's libraries keep them
(docs/score.md, "Files"). Nothing is downloaded and nothing here imports torch or Jittor, so the launcher can
say at launch which file is missing and which metric it blocks."""
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from common.sd.model_folder import ModelFolderError, resolve_model_folder

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"
# the LPIPS heads inside the two wheels that ship them
LPIPS_HEADS = (("lpips", "weights/v0.1/squeeze.pth"), ("torchmetrics", "functional/image/lpips_models/squeeze.pth"))


@dataclass(frozen=True)
class ScoreFiles:
    """Every file the score reads, found."""
    dino: Path  # transformers folder of facebook/dinov2-base
    clip: Path  # transformers folder of openai/clip-vit-large-patch14
    fid_inception: Path
    lpips_backbone: Path
    lpips_linear: Path
    clip_iqa: Path  # piq's CLIP RN50 TorchScript archive
    clip_iqa_tokenizer: Path  # the tokenizer folder of openai/clip-vit-base-patch16
    clip_r_prompts: Path  # the checker's word list


def torch_checkpoints() -> Path:
    """torch hub's download folder: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "torch"
    return Path(home).expanduser() / "hub" / "checkpoints"


def _hf(configured, repo: str, holds: str, metric: str) -> Tuple[Optional[Path], Optional[str]]:
    try:
        folder = resolve_model_folder(configured or repo, holds=holds)
    except ModelFolderError as e:
        return None, f"{e} (blocks {metric}; or set eval.{_key(metric)})"
    if not (folder / holds).is_file():
        return None, f"{folder}: has no {holds}, so it is not the {repo} folder (blocks {metric})"
    return folder, None


def _key(metric: str) -> str:
    return {"dino_score": "dino", "clip_r_score": "clip", "clip_iqa_score": "clip_iqa_tokenizer"}[metric]


def _file(configured, default: Path, key: str, metric: str, source: str) -> Tuple[Optional[Path], Optional[str]]:
    path = Path(configured).expanduser() if configured else default
    if path.is_file():
        return path, None
    where = f"eval.{key} = {configured}" if configured else f"{path} ({source}; or set eval.{key})"
    return None, f"{where}: no such file (blocks {metric})"


def installed_lpips_heads() -> Optional[Path]:
    """`squeeze.pth` inside an installed lpips or torchmetrics package (located, not imported)."""
    for package, inner in LPIPS_HEADS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / inner
            if path.is_file():
                return path
    return None


def _lpips_heads(configured) -> Tuple[Optional[Path], Optional[str]]:
    installed = installed_lpips_heads()
    if configured or installed:
        return _file(configured, installed, "lpips_linear", "lpip_score", "")
    return None, ("the LPIPS heads squeeze.pth: not configured, and no installed lpips or torchmetrics package "
                  "ships it (blocks lpip_score); set eval.lpips_linear")


def find_score_files(eval_config) -> Tuple[Optional[ScoreFiles], List[str]]:
    """(the files, []) when every one is found, else (None, one line per missing file)."""
    e = eval_config
    hub = torch_checkpoints()
    found = {
        "dino": _hf(e.dino, "facebook/dinov2-base", "config.json", "dino_score"),
        "clip": _hf(e.clip, "openai/clip-vit-large-patch14", "config.json", "clip_r_score"),
        "clip_iqa_tokenizer": _hf(e.clip_iqa_tokenizer, "openai/clip-vit-base-patch16", "vocab.json",
                                  "clip_iqa_score"),
        "fid_inception": _file(e.fid_inception, hub / INCEPTION_FILE, "fid_inception", "fid_score",
                               "torch-fidelity's download folder"),
        "lpips_backbone": _file(e.lpips_backbone, hub / SQUEEZENET_FILE, "lpips_backbone", "lpip_score",
                                "torchvision's download folder"),
        "lpips_linear": _lpips_heads(e.lpips_linear),
        "clip_iqa": _file(e.clip_iqa, Path("~/.cache/clip/RN50.pt").expanduser(), "clip_iqa", "clip_iqa_score",
                          "where piq keeps CLIP RN50"),
    }
    if e.clip_r_prompts:
        found["clip_r_prompts"] = _file(e.clip_r_prompts, Path(), "clip_r_prompts", "clip_r_score", "")
    else:
        found["clip_r_prompts"] = (None, "eval.clip_r_prompts is not set: point it at the checker's word list "
                                         "clip_r_prompts.txt (blocks clip_r_score)")
    missing = [why for _, why in found.values() if why]
    if missing:
        return None, missing
    return ScoreFiles(**{k: path for k, (path, _) in found.items()}), []
