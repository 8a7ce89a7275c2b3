"""A transformers model folder for the score's ViTs (DINOv2, CLIP): found offline, its config and weights read.

A folder path, or a repo id (`facebook/dinov2-base`) looked up in the Hugging Face cache as transformers
finds it; never downloaded. `model.safetensors` is preferred, then `pytorch_model.bin` (read by the safe
reader: no code runs). Every failure is one `ScoreFileError` line naming the file, what it is for and the fix.
"""
import json
from pathlib import Path

from common.score.errors import ScoreFileError
from common.sd.model_folder import ModelFolderError, resolve_model_folder
from common.sd.weights import WeightFileError, load_state_dict, read_weights

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def model_folder(spec, what: str) -> Path:
    """The folder of `spec` (a path or an org/name repo id); `what` says which metric needs it."""
    try:
        folder = resolve_model_folder(spec, holds="config.json")
    except ModelFolderError as e:
        raise ScoreFileError(f"{e} (the {what})") from None
    if not (folder / "config.json").is_file():
        raise ScoreFileError(f"{folder / 'config.json'}: missing, so {folder} is not the {what}'s "
                             "transformers folder; fix: pass the folder that holds config.json")
    return folder


def read_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ScoreFileError(f"{path}: the {what}'s config does not read ({e}); fix: download the model "
                             "again") from None
    if not isinstance(config, dict):
        raise ScoreFileError(f"{path}: the {what}'s config is not a JSON object; fix: download the model again")
    return config


def load_weights(module, folder: Path, what: str) -> None:
    """Fill `module` from the folder's weight file (names and shapes must match exactly)."""
    path = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if path is None:
        raise ScoreFileError(f"{folder / WEIGHT_NAMES[0]}: missing (the {what}'s weights; or "
                             f"{WEIGHT_NAMES[1]}); fix: download the model's weights")
    try:
        load_state_dict(module, read_weights(path), path)
    except WeightFileError as e:
        raise ScoreFileError(f"{e} (the {what})") from None


def build(cls, config: dict, folder: Path, what: str):
    """`cls(config)`, a config we cannot build being one line naming config.json."""
    try:
        return cls(config)
    except (KeyError, TypeError, ValueError) as e:
        raise ScoreFileError(f"{folder / 'config.json'}: {e} (the {what}); fix: use the model's own "
                             "config.json") from None
