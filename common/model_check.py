"""Check a model folder and LoRA files at launch, without Jittor and without reading tensor data.

The launcher never imports Jittor, yet a broken model file used to cost every worker its start-up (five
of them, then a parked slot). Here each component's `config.json` is checked against what our modules
accept, and the weight file's header (`common.sd.weights.inspect_weights`: names, dtypes, shapes, sizes
against the file) against the parameter names and shapes that config implies, read off the declaration
the Jittor modules are built from (`common/sd/architecture.py`), so the two cannot disagree. A LoRA is
checked by the engine's own reader (`common.sd.lora.LoraSet`) against the Linear layers named in the
model's headers; a LoRA file is a few MB, so reading it is cheap.

Every problem is one `ModelCheckError` line naming the file and the fix.
"""
import functools
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

from common.sd.architecture import COMPONENTS, Shapes, declared_shapes
from common.sd.configs import text_encoder_key, vae_key
from common.sd.model_folder import ModelFolderError, component_files, resolve_model_folder, scheduler_config
from common.sd.model_source import ModelOptions, open_model, options_of
from common.sd.single_file import is_single_file
from common.sd.weights import WeightFileError, inspect_weights


class ModelCheckError(ValueError):
    """A model folder or LoRA file the workers could not load (one line naming the file and the fix)."""


def _loaded_names(component: str, header: dict) -> Shapes:
    """{name: shape} of a weight file's tensors under the names the loader gives them."""
    out = {}
    for key, (_, shape) in header.items():
        if component == "vae":
            new = vae_key(key)
            if new != key and key.endswith(".weight") and len(shape) == 4:
                shape = shape[:2]  # old 1x1-conv projections load as Linear weights
            key = new
        elif component == "text_encoder":
            key = text_encoder_key(key)
        out[key] = tuple(shape)
    return out


IGNORED = ("position_ids",)  # buffers some files carry and the loader skips


def _compare(expected: Shapes, got: Shapes, weights: Path, component: str):
    unexpected = [k for k in got if k not in expected and not k.endswith(IGNORED)]
    missing = [k for k in expected if k not in got]
    shapes = [f"{k} {got[k]} vs config {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    for problem, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            raise ModelCheckError(f"{weights}: {len(keys)} {problem} for the {component} its config.json describes "
                                  f"(e.g. {', '.join(keys[:2])}); use the weights that ship with this config")


@functools.lru_cache(maxsize=8)
def _inspect_folder(folder: Path, _stamp) -> Dict[str, Shapes]:
    shapes = {}
    for component, declare in COMPONENTS.items():
        config_path = folder / component / "config.json"
        try:
            config, weights = component_files(folder, component)
        except ModelFolderError as e:
            raise ModelCheckError(str(e)) from None
        except (AttributeError, TypeError):  # valid JSON, but not an object with a class name
            raise ModelCheckError(f"{config_path}: not a {component} config (a JSON object naming its class in "
                                  "_class_name or architectures); download the model again") from None
        try:
            expected = declared_shapes(declare(config))
        except (ValueError, TypeError, KeyError) as e:
            raise ModelCheckError(f"{config_path}: {component} config: {' '.join(str(e).split())}; use a Stable "
                                  "Diffusion 1.x or 2.x model folder") from None
        try:
            got = _loaded_names(component, inspect_weights(weights))
        except WeightFileError as e:
            raise ModelCheckError(str(e)) from None
        _compare(expected, got, weights, component)
        shapes[component] = expected
    scheduler = folder / "scheduler" / "scheduler_config.json"
    try:
        if not isinstance(scheduler_config(folder), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ModelCheckError(f"{scheduler}: {' '.join(str(e).split())[:200]}; restore the scheduler config") from None
    _check_tokenizer_folder(folder / "tokenizer")
    return shapes


def _check_tokenizer_folder(tokenizer: Path) -> None:
    names = [n for n in ("vocab.json", "tokenizer.json") if (tokenizer / n).is_file()]
    if not names or (names[0] == "vocab.json" and not (tokenizer / "merges.txt").is_file()):
        raise ModelCheckError(f"{tokenizer}: no vocab.json + merges.txt (or tokenizer.json); restore the tokenizer")
    for name in names[:1]:
        try:
            json.loads((tokenizer / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelCheckError(f"{tokenizer / name}: not valid JSON ({' '.join(str(e).split())[:120]}); "
                                  "restore the tokenizer file") from None


def _stamp(folder: Path) -> tuple:
    """What the verdict depends on: every file's size and mtime (a fixed file is checked again)."""
    out = []
    for path in sorted(folder.glob("*/*")):
        try:
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None, None))
    return tuple(out)


def inspect_model(model) -> Dict[str, Shapes]:
    """{component: {parameter: shape}} of a model every check passed; ModelCheckError otherwise. `model`: a
    path or repo id, or the run config's `model` section (its other keys select how a single file is read)."""
    path = getattr(model, "path", model)
    options = options_of(model) if hasattr(model, "path") else ModelOptions()
    if is_single_file(path):
        file = Path(str(path)).expanduser().resolve()
        stat = file.stat()
        return _inspect_single_file(file, options, (stat.st_size, stat.st_mtime_ns))
    try:
        folder = resolve_model_folder(path).resolve()
    except ModelFolderError as e:
        raise ModelCheckError(str(e)) from None
    return _inspect_folder(folder, _stamp(folder))


@functools.lru_cache(maxsize=8)
def _inspect_single_file(file: Path, options: ModelOptions, _stamp) -> Dict[str, Shapes]:
    """As _inspect_folder, for a single-file checkpoint: the file's keys and shapes (header only) against
    the configs it is read with; then the tokenizer. Notes (e.g. no EMA weights) go to stderr, once."""
    try:
        source = open_model(file, options)
        shapes = {}
        for component, declare in COMPONENTS.items():
            try:
                expected = declared_shapes(declare(source.config(component)))
            except (ValueError, TypeError, KeyError) as e:
                raise ModelCheckError(f"{source.config_path(component)}: {component} config: {' '.join(str(e).split())}; "
                                      "set model.config to the diffusers folder this checkpoint belongs to") from None
            _compare(expected, source.header(component), file, component)
            shapes[component] = expected
        _check_tokenizer(source.tokenizer)
    except (ModelFolderError, WeightFileError, ValueError) as e:
        raise ModelCheckError(" ".join(str(e).split())) from None
    for note in source.notes:
        print(f"jstyleid: {note}", file=sys.stderr)
    return shapes


def _check_tokenizer(tokenizer) -> None:
    if tokenizer.bpe is not None:
        from common.sd.clip_vocab import vocab_and_merges
        try:
            vocab_and_merges(tokenizer.bpe)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ModelCheckError(f"{tokenizer.bpe}: unreadable ({' '.join(str(e).split())[:120]}); point "
                                  "model.tokenizer at CLIP's bpe_simple_vocab_16e6.txt.gz") from None
        return
    _check_tokenizer_folder(tokenizer.folder)


def attention_blocks(shapes: Dict[str, Shapes]) -> list:
    """The UNet's attention blocks (`up_blocks.2.attentions.0`, ...), the names consumer.layers uses."""
    return sorted({m.group(0) for k in shapes["unet"]
                   for m in [re.match(r"(down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.0", k)]
                   if m})


class _ShapesOnly:
    """Stands in for a model in LoraSet.read: its state_dict() gives each parameter's shape, no data."""

    def __init__(self, shapes: Shapes):
        self._state = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}

    def state_dict(self):
        return self._state


def check_lora_file(path, model: Dict[str, Shapes]):
    """Parse a LoRA's header, then validate it as a worker would (LoRA keys, modules this model has,
    shapes that fit); ModelCheckError naming the file otherwise."""
    from common.sd.lora import LoraError, LoraSet
    try:
        inspect_weights(path)
        LoraSet.read(path, _ShapesOnly(model["unet"]), _ShapesOnly(model["text_encoder"]))
    except (WeightFileError, LoraError) as e:
        raise ModelCheckError(" ".join(str(e).split())) from None
