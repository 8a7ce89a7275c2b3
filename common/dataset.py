"""The dataset as users lay it out (the Jittor AI challenge's style track): one folder per style.

    DATASET/STYLE/images/*.png    the style's reference images
    DATASET/STYLE/prompt.json     {"0": "Dolphin", "1": "Bamboo", ...}: one output per prompt

`read_dataset` reads every style into a `Style` (its prompts in prompt.json order, each with its safe,
unique file name from `common.naming`), or raises a one-line `DatasetError` naming the file and the fix.
Jittor-free: the launcher reads the dataset before any worker starts.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from common.naming import name_problem, one_line, prompt_names
from common.style_files import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """A dataset problem; one line naming the file and the fix."""


@dataclass(frozen=True)
class Prompt:
    key: str  # its key in prompt.json
    text: str
    name: str  # the output's file name, without .png


@dataclass(frozen=True)
class Style:
    name: str  # the folder's name, e.g. "00"
    dir: Path
    prompts: Tuple[Prompt, ...]

    @property
    def images(self) -> Path:
        return self.dir / "images"


MAX_STYLE_NAME = 128  # UTF-8 bytes: room for lora.subdir's prefix, temp-file suffixes, and 255-byte file names


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    """json's object_pairs_hook: a key given twice is an error (json.loads would keep the last)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def read_prompts(path: Path) -> dict:
    """{key: prompt} of one prompt.json, ordered by numeric key (then the other keys)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; write the style's prompts as {{\"0\": \"Dolphin\", ...}}") from None
    except _DuplicateKey as e:
        raise DatasetError(f"{path}: key {e.args[0]!r} appears twice (only the last would be used); give each "
                           "prompt its own key") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not valid JSON ({one_line(e)}); fix the file") from None
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a non-empty object like {{\"0\": \"Dolphin\", ...}}")
    for key, prompt in data.items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{path}: prompt {key!r} must be a non-empty string, not {prompt!r}")
    order = sorted(data, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
    return {k: data[k] for k in order}


def check_style_name(folder: Path) -> str:
    """A style's folder name becomes a folder under the output and in the queue: it must be a name every
    filesystem holds with room to spare, and print on one line."""
    name = folder.name
    why = name_problem(name, MAX_STYLE_NAME)
    if why:
        raise DatasetError(f"{folder!r}: the style folder's name {why}; rename the folder")
    return name


def read_style(folder: Path) -> Style:
    check_style_name(folder)
    images = folder / "images"
    if not images.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
        raise DatasetError(f"{images}: no images; put the style's reference images (PNG/JPEG) there")
    source = folder / "prompt.json"
    prompts = read_prompts(source)
    names = prompt_names(prompts, str(source))
    return Style(folder.name, folder, tuple(Prompt(k, prompts[k], names[k]) for k in prompts))


def read_dataset(root) -> list:
    """Every style folder of the dataset (hidden ones skipped), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: the dataset is not a folder; point `dataset` in the config at the folder "
                           "that holds one folder per style")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root}: no style folders; expected {root}/STYLE/images/* and STYLE/prompt.json")
    return [read_style(folder) for folder in folders]
