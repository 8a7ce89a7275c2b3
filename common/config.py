"""The run configuration: YAML parsed once, at the edge, into typed, frozen dataclasses.

Every section is a dataclass whose fields are the YAML keys. `load_config` rejects an unknown key, a wrong
type or a missing path with one line naming the key and the file. Inner code takes these objects, never
dicts. Each field declares beside it whether it changes output pixels (`pixels(default)` or
`runtime(default)`); `pixel_hash()` covers the first kind, so a rerun can refuse to mix results. A value
given in YAML as a word (queue.fsync: all | none) is read into the type the code uses, here.
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

from common.naming import name_problem


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the file and the key."""


def pixels(default, **meta):
    """A setting that changes output pixels: `pixel_hash()` covers it, so a queue planned under another
    value is refused instead of mixing results."""
    return field(default=default, metadata={"pixels": True, **meta})


def added(default, **meta):
    """A pixel setting added after queues were planned: `pixel_hash()` (or `train_hash()`, for the train
    section) covers it only when it differs from its default, so the defaults keep the hashes (the job ids,
    the records) every existing queue and LoRA was made under."""
    return pixels(default, added=True, **meta)


def runtime(default, **meta):
    """A setting that never changes a pixel (batching, timing, retries, paths of the run's folders)."""
    return field(default=default, metadata={"pixels": False, **meta})


FSYNC_WORDS = {"all": True, "none": False}  # queue.fsync in YAML -> whether writes are fsynced


@dataclass(frozen=True)
class ModelConfig:
    """The SD model: a diffusers folder, a repo id in the HF cache, or a single-file checkpoint
    (docs/engine.md §13 says what a single file takes from the keys below). The single-file keys enter the
    pixel hash only when set, so runs planned before they existed keep their hash."""
    path: str = pixels("stabilityai/stable-diffusion-2-1")  # a diffusers folder, a repo id in the HF cache
    dtype: str = pixels("float16")  # UNet/text encoder precision on a GPU; the CPU always runs float32
    prediction: str = added("auto")  # auto (scheduler config, else inferred) | v_prediction | epsilon
    # single files only: the UNet's EMA weights; the native size (None: 768 for v-prediction, else 512); a tokenizer
    # folder, diffusers folder or CLIP BPE .txt.gz; a diffusers folder (or repo id) whose configs describe the file
    ema: bool = added(False)
    image_size: Optional[int] = added(None)
    tokenizer: Optional[str] = added(None)
    config: Optional[str] = added(None)


@dataclass(frozen=True)
class LoraConfig:
    """Where each style's DreamBooth LoRA is and how it is applied; shared by every stage that uses it."""
    dir: str = pixels("style")  # holds style_NN/pytorch_lora_weights.bin (JDiffusion's trainer layout)
    subdir: str = pixels("style_{style}")
    names: tuple = pixels(("pytorch_lora_weights.bin", "pytorch_lora_weights.safetensors"))  # first existing wins
    scale: float = pixels(1.0)
    missing: str = pixels("train")  # train (the train stage writes it) | error | warn (the base model generates)


MISSING_LORA = ("error", "warn", "train")


@dataclass(frozen=True)
class ProducerConfig:
    prompt_template: str = pixels("{prompt} in style_{style}")
    negative_prompt: str = pixels("")
    guidance: float = pixels(7.5)
    steps: int = pixels(25)
    size: int = pixels(512)
    batch: int = runtime(4)
    seed: int = pixels(0)


@dataclass(frozen=True)
class ConsumerConfig:
    size: Optional[int] = pixels(None)  # side a content PNG is resized to before encoding; None: producer.size
    steps: int = pixels(50)
    gamma: float = pixels(0.75)
    temperature: float = pixels(1.5)
    layers: tuple = pixels(tuple(f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3)))
    adain: bool = pixels(True)
    style_image: Optional[str] = pixels(None)  # a file name inside STYLE/images/; None: the first in sorted order
    batch: int = runtime(4)
    cached_styles: int = runtime(2)  # styles whose inversion a worker keeps (LRU)
    use_lora: bool = pixels(False)  # StyleID runs on the base model by default (docs/styleid.md §12)


UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                "conv1", "conv2", "conv_shortcut")
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine")


@dataclass(frozen=True)
class TextEncoderLoraConfig:
    """LoRA on the CLIP text encoder's q_proj/k_proj/v_proj/out_proj, trained beside the UNet's."""
    rank: int = pixels(4)  # alpha = rank
    lr: Optional[float] = pixels(None)  # None: train.lr


@dataclass(frozen=True)
class PriorConfig:
    """Prior preservation: class images the base model makes from `prompt` ({style} may name the style),
    trained beside the style's images at `weight` (diffusers' --with_prior_preservation)."""
    prompt: str = pixels("")  # the class prompt, e.g. "a painting"; styles with the same one share its images
    images: int = pixels(100)  # class images per class prompt (num_class_images)
    weight: float = pixels(1.0)  # prior_loss_weight: loss = instance loss + weight x class loss


@dataclass(frozen=True)
class TrainConfig:
    """DreamBooth-LoRA training of one style, with the values JDiffusion's train_all.sh passes; the recipe
    options below (off by default) are diffusers' and peft's (docs/training.md)."""
    steps: int = pixels(500)  # optimiser steps
    lr: float = pixels(1e-4)  # constant, no warm-up
    rank: int = pixels(4)  # LoRA alpha = rank (scale 1), as peft is configured there
    alpha: Optional[float] = added(None)  # LoRA alpha apart from rank (scale alpha/rank); None: rank
    targets: tuple = added(UNET_TARGETS[:4])  # UNet modules with a LoRA, matched by name as peft does
    text_encoder: Optional[TextEncoderLoraConfig] = added(None)  # {rank, lr}: a text-encoder LoRA too
    lr_ratio_b: float = added(1.0)  # LoRA+: the B (up) matrices learn at this times the lr
    batch_size: int = added(1)
    gradient_accumulation: int = added(1)  # micro-batches summed per optimiser step
    lr_scheduler: str = added("constant")  # constant | constant_with_warmup | cosine (diffusers' get_scheduler)
    lr_warmup_steps: int = added(0)
    snr_gamma: Optional[float] = added(None)  # min-SNR loss weighting (e.g. 5.0); None: plain MSE
    noise_offset: float = added(0.0)  # adds this times a per-channel N(0, 1) to the diffusion noise
    prior: Optional[PriorConfig] = added(None)  # {prompt, images, weight}: prior preservation (docs/training.md)
    pack: bool = added(False)  # one LoRA over every style's images, each style with its own token
    size: Optional[int] = pixels(None)  # training resolution; None: producer.size
    resize: str = pixels("crop")  # crop: shorter side to size, centre crop | stretch: straight to size x size
    prompt: str = pixels("style_{style}")  # the instance prompt; producer.prompt_template puts it after the prompt
    seed: int = pixels(0)  # LoRA init, image order, noise and timesteps all come from NumPy seeded by this
    adam_beta1: float = pixels(0.9)
    adam_beta2: float = pixels(0.999)
    adam_weight_decay: float = pixels(1e-2)
    adam_epsilon: float = pixels(1e-8)
    checkpoint_every: int = runtime(50)  # steps between resumable checkpoints
    log_every: int = runtime(10)  # steps between loss lines in the log
    safetensors: bool = runtime(False)  # also write pytorch_lora_weights.safetensors beside the .bin


@dataclass(frozen=True)
class QueueConfig:
    max_attempts: int = runtime(3)  # failed attempts (error, crash, hang; not a release) before the dead letter
    fsync: bool = runtime(True, words=FSYNC_WORDS)  # YAML all | none (tmpfs, CI): whether queue and output writes fsync
    heartbeat_s: float = runtime(2.0)
    ttl_loading_s: float = runtime(1200.0)
    ttl_working_s: float = runtime(180.0)
    backoff_base_s: float = runtime(30.0)
    backoff_max_s: float = runtime(600.0)
    restart_base_s: float = runtime(1.0)  # a crashed worker restarts after min(base * 2^k, 60) s
    kill_grace_s: float = runtime(20.0)  # a hung worker gets SIGTERM, then SIGKILL after this
    stop_grace_s: float = runtime(30.0)  # Ctrl-C: workers get this long to release their jobs


@dataclass(frozen=True)
class StagesConfig:
    """The stage graph (`graph`: module:function building it from the config, docs/stage_graph.md) and
    which class runs each stage (`module:Class`), with their relative costs."""
    graph: str = pixels("common.graph:default_graph")
    train: str = pixels("producer.train_stage:TrainStage")
    gen: str = pixels("producer.stage:ProducerStage")
    sty: str = pixels("consumer.stage:ConsumerStage")
    score: str = runtime("consumer.score_stage:ScoreStage")
    prior: str = added("producer.prior_stage:PriorStage")  # class images, with train.prior
    train_cost: float = runtime(150.0)  # relative seconds per job (a style's training ~ 150 content images)
    gen_cost: float = runtime(1.0)  # relative seconds per image (configured, not measured): sets the GPU split
    sty_cost: float = runtime(2.0)
    score_cost: float = runtime(20.0)  # a style's score ~ 20 StyleID images
    prior_cost: float = runtime(1.0)  # a class image ~ a content image


@dataclass(frozen=True)
class SchedulingConfig:
    burst: int = runtime(8)  # single-GPU mode: content images generated before styling them
    producers: Optional[int] = runtime(None)  # fixed producer count; None: split by the configured stage costs


@dataclass(frozen=True)
class EvalConfig:
    """The challenge's score (docs/score.md): each file a path, or None to look where the checker's
    libraries keep it (common/score/files.py). Scores never change a pixel."""
    enabled: Optional[bool] = runtime(None)  # None: score when every file is found | true: refuse without | false
    dino: Optional[str] = runtime(None)  # facebook/dinov2-base folder (or repo id in the HF cache)
    clip: Optional[str] = runtime(None)  # openai/clip-vit-large-patch14 folder
    fid_inception: Optional[str] = runtime(None)  # weights-inception-2015-12-05-6726825d.pth
    lpips_backbone: Optional[str] = runtime(None)  # squeezenet1_1-b8a52dc0.pth
    lpips_linear: Optional[str] = runtime(None)  # LPIPS v0.1 squeeze.pth
    clip_iqa: Optional[str] = runtime(None)  # piq's CLIP RN50.pt
    clip_iqa_tokenizer: Optional[str] = runtime(None)  # openai/clip-vit-base-patch16 folder
    clip_r_prompts: Optional[str] = runtime(None)  # the checker's clip_r_prompts.txt


@dataclass(frozen=True)
class RunConfig:
    dataset: str = runtime("data/styles")  # STYLE/images/*.png + STYLE/prompt.json
    output: str = runtime("output")  # results land in OUTPUT/STYLE/<prompt>.png
    queue_dir: str = runtime("queue_dir")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = runtime("")  # the YAML file this came from (not a key users set)

    def pixel_hash(self) -> str:
        """A hash of every setting declared `pixels` (not GPUs, paths of queues, or batching). The train
        section is not in it: a result records its LoRA by content (docs/queue.md §11), so a changed recipe
        redoes only what that LoRA made (`train_hash`). The stages' settings are hashed as a list, the form
        every plan so far was hashed in (job ids derive from this hash)."""
        relevant = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                settings = pixel_settings(value)
                if settings and f.name != "train":
                    relevant[f.name] = settings
            elif f.metadata["pixels"]:
                relevant[f.name] = value
        relevant["stages"] = list(relevant["stages"].values())
        return _digest(relevant)

    @property
    def train_size(self) -> int:
        """The training resolution (class images are made at it too)."""
        return self.train.size if self.train.size is not None else self.producer.size

    def train_hash(self) -> str:
        """A hash of the settings a LoRA trained here depends on: the train section's pixel settings (its
        size resolved), the model and the training stage; with prior preservation also the settings its
        class images are made with (`class_image_hash`)."""
        relevant = dict(pixel_settings(self.train))
        relevant["size"] = self.train_size
        settings = {"train": relevant, "model": pixel_settings(self.model), "stage": self.stages.train}
        if self.train.prior is not None:
            settings["class images"] = self.class_image_hash()
        return _digest(settings)

    def class_image_hash(self) -> str:
        """A hash of the settings prior preservation's class images are made with: sampled as content images
        (producer.steps, guidance, negative prompt) at the training size, by the model and the prior stage.
        The class prompt and the image's seed are its job's."""
        p = self.producer
        return _digest({"size": self.train_size, "steps": p.steps, "guidance": p.guidance,
                        "negative_prompt": p.negative_prompt, "model": pixel_settings(self.model),
                        "stage": self.stages.prior})


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pixel_settings(section) -> dict:
    """{name: value} of a section's settings declared `pixels` (those declared `added`: only when not at
    their default, so hashes made before they existed stay valid)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.metadata["pixels"]
            and not (f.metadata.get("added") and getattr(section, f.name) == f.default)}


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return cls(**{k: _setting(v, hints[k], fields[k], f"{where}.{k}" if where else k) for k, v in data.items()})


def _setting(value, hint, f: dataclasses.Field, where: str):
    """One YAML value for field `f`: a word it names (`words`: YAML word -> value), else typed by its hint."""
    words = f.metadata.get("words")
    if words is None:
        return _convert(value, hint, where)
    if not isinstance(value, str) or value not in words:
        raise ConfigError(f"{where}: must be {' or '.join(map(repr, words))}, not {value!r}")
    return words[value]


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
        why = name_problem(name)
        if why:
            bad("lora.names", f"has {name!r}, which {why}; list plain file names inside lora.subdir")
    _check_train(c.train, bad)
    qc = c.queue
    for key in ("heartbeat_s", "ttl_loading_s", "ttl_working_s"):
        if not getattr(qc, key) > 0:  # 0 would make the supervisor spin, < 0 kill every worker at once
            bad(f"queue.{key}", f"must be positive (seconds), not {getattr(qc, key)}")
    for key in ("backoff_base_s", "backoff_max_s", "restart_base_s", "kill_grace_s", "stop_grace_s"):
        if not getattr(qc, key) >= 0:
            bad(f"queue.{key}", f"must be 0 or more (seconds), not {getattr(qc, key)}")
    for key in ("train_cost", "gen_cost", "sty_cost", "score_cost", "prior_cost"):
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
    _check_fields("train.prompt", t.prompt, ("style", "caption"), bad)
    for key, value in (("batch_size", t.batch_size), ("gradient_accumulation", t.gradient_accumulation)):
        if value < 1:
            bad(f"train.{key}", f"must be at least 1, not {value}")
    if t.alpha is not None and not t.alpha > 0:
        bad("train.alpha", f"must be positive (or unset for alpha = rank), not {t.alpha}")
    if not t.targets or any(target not in UNET_TARGETS for target in t.targets) or len(set(t.targets)) < len(t.targets):
        bad("train.targets", f"must list UNet modules among {', '.join(UNET_TARGETS)} once each, not {list(t.targets)}")
    te = t.text_encoder
    if te is not None and (te.rank < 1 or (te.lr is not None and not te.lr > 0)):
        bad("train.text_encoder", f"needs rank >= 1 and a positive lr (or none for train.lr), not {te}")
    if not t.lr_ratio_b > 0:
        bad("train.lr_ratio_b", f"must be positive (1 trains A and B at train.lr), not {t.lr_ratio_b}")
    if t.lr_scheduler not in LR_SCHEDULES:
        bad("train.lr_scheduler", f"must be one of {', '.join(LR_SCHEDULES)}, not {t.lr_scheduler!r}")
    if not 0 <= t.lr_warmup_steps <= t.steps:
        bad("train.lr_warmup_steps", f"must lie in [0, train.steps], not {t.lr_warmup_steps}")
    if t.snr_gamma is not None and not t.snr_gamma > 0:
        bad("train.snr_gamma", f"must be positive (or unset for plain MSE), not {t.snr_gamma}")
    if not t.noise_offset >= 0:
        bad("train.noise_offset", f"must be 0 or more, not {t.noise_offset}")
    if t.pack and "{style}" not in t.prompt:
        bad("train.pack", f"needs train.prompt to name each style's token with {{style}}, not {t.prompt!r}")
    if t.pack and t.prior is not None:
        bad("train.pack", "is not yet combined with train.prior; set one of them")
    if t.prior is not None:
        if not t.prior.prompt.strip():
            bad("train.prior.prompt", "must be set: the class prompt, e.g. 'a painting'")
        _check_fields("train.prior.prompt", t.prior.prompt, ("style",), bad)
        if t.prior.images < 1:
            bad("train.prior.images", f"must be at least 1, not {t.prior.images}")
        if not t.prior.weight > 0:
            bad("train.prior.weight", f"must be positive, not {t.prior.weight}")


def require_path(path, key: str, source: str) -> Path:
    """A path setting that must exist (checked where it is used, e.g. at launch)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{source or '<defaults>'}: {key} = {path!r} does not exist; fix the path in the config")
    return p
