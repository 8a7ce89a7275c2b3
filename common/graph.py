"""The pipeline as a declared graph of stages (docs/stage_graph.md).

Each stage declares its name, its unit of work (one job per style, or per style and prompt), which earlier
stages' outputs it reads, its outputs (the truth that a job is done), the hand-offs a later stage consumes
and the working files to drop once it is done, and the checks to run at launch. Everything else reads this
declaration: the planner expands it over the dataset into jobs, the queue learns from it what "done" means
and what to do on completion (`StageRules`), and the launcher, workers, status, progress and scheduling
take their stage names, batch sizes and costs from it. A new stage is a `StageSpec` plus a stage class.

    train (per style, only for styles without a LoRA when lora training is on)
      -> gen (per prompt: content image + latent)  -> sty (per prompt: StyleID result)

Paths are never read from job files: a task's files are derived here from the config and the job's style
and file name (both checked to be plain names), so a forged job cannot make a worker write elsewhere.
"""
import hashlib
import importlib
import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from common.atomic import npy_is_complete, png_is_complete
from common.config import ConfigError, RunConfig
from common.dataset import DatasetError, Style
from common.jobqueue.job import CorruptJob, Job
from common.jobqueue.layout import Layout
from common.jobqueue.planner import Node
from common.stage import Task

STYLE, PROMPT = "style", "prompt"  # units of work
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def plain_name(value, what: str) -> str:
    """A single path component we may write under: no separators, not hidden, not `.`/`..`, not too long."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or "\0" in value \
            or value.startswith(".") or len(value.encode("utf-8")) > 200:
        raise ValueError(f"{what} {value!r} is not a plain file name")
    return value


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration. Functions take the stage's Task."""
    name: str
    unit: str  # STYLE or PROMPT
    impl: str  # module:Class of the stage a worker builds (common.stage's contract)
    verb: str  # what the launcher says it queued: "6 to generate"
    needs: Tuple[str, ...] = ()  # earlier stages whose outputs its jobs read
    outputs: Callable[[Task], Dict[Path, Callable[[Path], bool]]] = lambda t: {}  # {file: is it whole?}
    handoffs: Callable[[Task], Tuple[Path, ...]] = lambda t: ()  # outputs only later stages read
    scratch: Callable[[Task], Tuple[Path, ...]] = lambda t: ()  # working files, removed once done
    batch: int = 1
    cost: float = 1.0  # relative seconds per job, for the GPU split
    sharded: bool = False  # many jobs per group: split pending folders 256 ways
    checks: Tuple[Callable[[RunConfig], None], ...] = ()  # at launch, raising ConfigError
    style_checks: Tuple[Callable[[RunConfig, Style], None], ...] = ()  # at launch, raising DatasetError
    progress_unit: str = "img"
    steps: int = 0  # > 0: the progress bar counts steps of `steps` per job (training), read by `progress`
    progress: Callable[[Task], Optional[dict]] = lambda t: None  # a job in flight: {"step", "steps", "loss"}
    inputs: Callable[[Task], Tuple[Path, ...]] = lambda t: ()  # user files it reads: a fix requeues its failures


class _Rules:
    """A stage's StageRules for the queue, read off its declaration."""

    def __init__(self, graph: "Graph", spec: StageSpec):
        self.graph, self.spec, self.sharded = graph, spec, spec.sharded

    def _task(self, job: Job) -> Optional[Task]:
        try:
            return self.graph.task(job)
        except CorruptJob:
            return None

    def done(self, job: Job) -> bool:
        task = self._task(job)
        return task is not None and self.graph.outputs_ok(self.spec, task)

    def temp_files(self, job: Job) -> Iterable[Path]:
        task = self._task(job)
        return list(self.spec.outputs(task)) if task else []

    def inputs(self, job: Job) -> List[Path]:
        """The user's files the job reads (its LoRA, its style image): fixing one requeues its dead letter."""
        task = self._task(job)
        return [p for p in self.spec.inputs(task) if p is not None] if task else []

    def partial_outputs(self, job: Job) -> List[Path]:
        """Outputs that exist but are not whole (a truncated write): the planner removes them."""
        task = self._task(job)
        return [p for p, ok in self.spec.outputs(task).items() if p.exists() and not ok(p)] if task else []

    def follow_ups(self, job: Job) -> Iterable[Job]:
        return [self.graph.job(nxt, job.group, job.payload) for nxt in self.graph.followers(self.spec.name)]

    def after_done(self, job: Job):
        task = self._task(job)
        if task is None:
            return
        for path in self.spec.scratch(task):
            _remove(path)
        for up in self.spec.needs:  # an upstream hand-off is spent once every stage reading it is done
            upstream = self.graph.spec(up)
            if upstream.unit != self.spec.unit or not upstream.handoffs(task):
                continue
            readers = [s for s in self.graph.specs if up in s.needs and s.unit == upstream.unit]
            if all(s.name == self.spec.name or self.graph.outputs_ok(s, task) for s in readers):
                for path in upstream.handoffs(task):
                    _remove(path)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def item_id(style: str, prompt: str, seed: int, plan: str) -> str:
    """The id every per-prompt stage shares: what the job produces, so planning is idempotent."""
    key = json.dumps([style, prompt, seed, plan], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def style_id(stage: str, style: str, plan: str) -> str:
    key = json.dumps([stage, style, plan], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


class Graph:
    """The declared stages of one run, in order, over the config's paths."""

    # Folders the first two-stage layout made in queue_dir: --fresh and the queue-folder check count them
    # as the queue's own (docs/queue.md §9).
    former_folders = ("content", "gen", "sty")

    def __init__(self, config: RunConfig, specs: List[StageSpec]):
        names = [s.name for s in specs]
        for i, s in enumerate(specs):
            if not _STAGE_NAME.fullmatch(s.name) or s.name in names[:i]:
                raise ConfigError(f"stage graph: stage name {s.name!r} is not a unique lower-case identifier")
            if s.unit not in (STYLE, PROMPT):
                raise ConfigError(f"stage graph: stage {s.name!r} has unit {s.unit!r}, not {STYLE!r} or {PROMPT!r}")
            for need in s.needs:
                if need not in names[:i]:
                    raise ConfigError(f"stage graph: stage {s.name!r} needs {need!r}, which is not an earlier stage")
        self.config, self.specs = config, list(specs)
        self.plan = config.pixel_hash()
        self.dataset = Path(config.dataset).resolve()
        self.output = Path(config.output).resolve()
        self.queue_dir = Path(config.queue_dir).resolve()
        self.layout = Layout(self.queue_dir, {s.name: s.sharded for s in specs})

    # -- the declaration ------------------------------------------------------------------------------
    @property
    def stages(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def spec(self, name: str) -> StageSpec:
        return next(s for s in self.specs if s.name == name)

    def rules(self) -> dict:
        return {s.name: _Rules(self, s) for s in self.specs}

    def followers(self, name: str) -> List[StageSpec]:
        """Later stages of the same unit that read `name`: a completion publishes their job (1:1 edge)."""
        unit = self.spec(name).unit
        return [s for s in self.specs if name in s.needs and s.unit == unit]

    def flow(self) -> Tuple[str, str]:
        """(upstream, downstream) of the last 1:1 edge, which back-pressure and elastic roles balance."""
        for s in reversed(self.specs):
            for need in s.needs:
                if self.spec(need).unit == s.unit:
                    return need, s.name
        raise ConfigError("stage graph: no two stages of the same unit connected; nothing to balance")

    def stage_class(self, name: str):
        module, _, cls = self.spec(name).impl.partition(":")
        return getattr(importlib.import_module(module), cls)

    # -- tasks ----------------------------------------------------------------------------------------
    def job(self, spec: StageSpec, style: str, payload: dict, after: Tuple[str, ...] = ()) -> Job:
        jid = style_id(spec.name, style, self.plan) if spec.unit == STYLE else \
            item_id(style, payload["prompt"], payload["seed"], self.plan)
        return Job(id=jid, stage=spec.name, group=style, plan=self.plan,
                   payload={} if spec.unit == STYLE else dict(payload), after=tuple(after),
                   max_attempts=self.config.queue.max_attempts)

    def task(self, job: Job) -> Task:
        """The job's Task with every path derived from the config; CorruptJob if its fields are not ours."""
        try:
            spec = self.spec(job.stage)
        except StopIteration:
            raise CorruptJob(f"job {job.id}: unknown stage {job.stage!r}") from None
        try:
            style = plain_name(job.group, "style")
            prompt = name = None
            seed = 0
            if spec.unit == PROMPT:
                p = job.payload
                if not isinstance(p.get("prompt"), str) or type(p.get("seed")) is not int:
                    raise ValueError("payload needs a prompt (str) and a seed (int)")
                prompt, name, seed = p["prompt"], plain_name(p.get("name"), "name"), p["seed"]
        except ValueError as e:
            raise CorruptJob(f"{job.stage} job {job.id}: {e}") from None
        out = self.output / style
        if out.is_symlink() or (out / "content").is_symlink():  # planted after launch: never write through it
            raise CorruptJob(f"{job.stage} job {job.id}: {out} or its content/ is a symbolic link; results are "
                             "written only inside the output folder")
        return Task(id=job.id, style=style, prompt=prompt, name=name, seed=seed, style_dir=self.dataset / style,
                    content_png=out / "content" / f"{name}.png" if name else None,
                    content_latent=self.layout.handoff_path("gen", job.id, ".npy") if name else None,
                    output_png=out / f"{name}.png" if name else None,
                    lora_file=lora_target(self.config, style),
                    scratch_dir=self.layout.scratch_dir(job.stage, job.id))

    def outputs_ok(self, spec: StageSpec, task: Task) -> bool:
        return all(ok(path) for path, ok in spec.outputs(task).items())

    # -- planning -------------------------------------------------------------------------------------
    def nodes(self, styles: List[Style]) -> List[Node]:
        """Every job the dataset asks of every stage, with its prerequisites, in stage order."""
        nodes = []
        keys = {}  # (stage, style, prompt key or None) -> job key
        for spec in self.specs:
            for style in styles:
                units = [None] if spec.unit == STYLE else list(style.prompts)
                for prompt in units:
                    payload = {} if prompt is None else {"prompt": prompt.text, "name": prompt.name,
                                                         "seed": self.config.producer.seed}
                    needs, published_by = [], None
                    for up in spec.needs:
                        upstream = self.spec(up)
                        if upstream.unit == spec.unit:
                            published_by = keys[(up, style.name, prompt.key if prompt else None)]
                            needs.append(published_by)
                        elif upstream.unit == STYLE:
                            needs.append(keys[(up, style.name, None)])
                        else:  # a per-style stage reading a per-prompt one waits for all its prompts
                            needs += [keys[(up, style.name, p.key)] for p in style.prompts]
                    job = self.job(spec, style.name, payload)
                    keys[(spec.name, style.name, prompt.key if prompt else None)] = job.key
                    nodes.append(Node(job, tuple(needs), published_by))
        return nodes

    def check(self, styles: List[Style]):
        """The launch checks, each once: the folders (any graph), then the stages' own (model files, style
        images, LoRAs). Each raises one line naming the file and the fix."""
        check_queue_dir(self.config)
        check_output_links(self.config, styles)
        done = set()
        for check in (c for spec in self.specs for c in spec.checks):
            if check not in done:
                done.add(check)
                check(self.config)
        for style in styles:
            done = set()
            for check in (c for spec in self.specs for c in spec.style_checks):
                if check not in done:
                    done.add(check)
                    check(self.config, style)

    def output_dirs(self) -> List[Path]:
        """Where stage outputs (and so their temp files) land."""
        return [self.output, Path(self.config.lora.dir).resolve()]


# -- the jstyleid stages ------------------------------------------------------------------------------
def lora_target(config: RunConfig, style: str) -> Path:
    """The style's LoRA file: the existing one the producer will read, else where training writes it."""
    from common.style_files import lora_path
    lora = config.lora
    return lora_path(config, style) or Path(lora.dir) / lora.subdir.format(style=style) / lora.names[0]


def _where(config: RunConfig) -> str:
    return config.source or "<defaults>"


def check_model(config: RunConfig):
    """Model files: configs our modules accept, weight headers that match them (common/model_check.py)."""
    from common.model_check import ModelCheckError, inspect_model
    try:
        inspect_model(config.model)
    except ModelCheckError as e:
        raise ConfigError(f"{_where(config)}: model.path: {e}") from None


def check_layers(config: RunConfig):
    """consumer.layers names attention blocks this UNet has (they follow from its block types and
    layers_per_block); StyleID would otherwise fail in every job."""
    from common.model_check import attention_blocks, inspect_model
    blocks = attention_blocks(inspect_model(config.model))
    for layer in config.consumer.layers:
        if layer not in blocks:
            raise ConfigError(f"{_where(config)}: consumer.layers has {layer!r}, which the UNet of {config.model.path} "
                              f"lacks (it has {', '.join(b for b in blocks if b.startswith('up_'))}, ...); "
                              "name blocks it has")


def check_style_image(config: RunConfig, style: Style):
    """The style image StyleID reads exists and decodes (common.images.verify_image)."""
    from common.images import ImageError, verify_image
    from common.style_files import style_image_path
    try:
        verify_image(style_image_path(style.dir, config.consumer.style_image))
    except (FileNotFoundError, ImageError) as e:
        raise DatasetError(str(e)) from None


def check_lora(config: RunConfig, style: Style):
    """The style's LoRA exists (unless it may be missing) and fits this model: a parsed header, LoRA keys
    for modules the model has, shapes that fit."""
    from common.model_check import ModelCheckError, check_lora_file, inspect_model
    from common.style_files import lora_path, missing_lora_message
    path = lora_path(config, style.name)
    if path is None:
        if config.lora.missing == "error":
            raise DatasetError(missing_lora_message(config, style.name))
        return
    try:
        check_lora_file(path, inspect_model(config.model))
    except ModelCheckError as e:
        raise DatasetError(f"{e} (lora of style {style.name})") from None


def _relation(a: Path, b: Path) -> Optional[str]:
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def check_queue_dir(config: RunConfig):
    """The queue folder is the queue's alone: recovery and --fresh delete what lies there, so it must not
    be, contain or lie inside the dataset, the outputs, the model or the LoRA folders (links resolved)."""
    queue = Path(config.queue_dir).resolve()
    others = [("dataset", Path(config.dataset)), ("output", Path(config.output)), ("lora.dir", Path(config.lora.dir))]
    try:
        from common.sd.model_folder import resolve_model_folder
        others.append(("model.path", resolve_model_folder(config.model.path)))
    except (OSError, ValueError):  # no such model: its own check says so
        pass
    for key, folder in others:
        relation = _relation(queue, folder.resolve())
        if relation:
            raise ConfigError(f"{_where(config)}: queue_dir {queue} {relation} the {key} folder {folder.resolve()}; "
                              "recovery and --fresh delete what lies in the queue folder: give queue_dir a folder "
                              "of its own")


def check_output_links(config: RunConfig, styles: Iterable[Style]):
    """No style folder inside the output folder (nor its content/) is a link: a worker writes only inside
    the configured output folder."""
    out = Path(config.output).resolve()
    for style in styles:
        for folder in (out / style.name, out / style.name / "content"):
            if folder.is_symlink():
                raise DatasetError(f"{folder}: is a symbolic link (to {os.readlink(folder)}); results are written "
                                   "only inside the output folder: remove the link or point `output` elsewhere")


def _file_exists(path: Path) -> bool:
    return path.is_file()


def scratch_progress(task: Task) -> Optional[dict]:
    """A job's progress.json in its scratch folder ({"step", "steps", "loss"}), if it wrote one."""
    try:
        data = json.loads((task.scratch_dir / "progress.json").read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and all(type(data.get(k)) is int for k in ("step", "steps"))
    return data if ok else None


def _style_inputs(config: RunConfig, task: Task) -> Tuple[Path, ...]:
    from common.style_files import style_image_path
    try:
        return (style_image_path(task.style_dir, config.consumer.style_image),)
    except FileNotFoundError:
        return (task.style_dir / "images",)


def jstyleid_specs(config: RunConfig) -> List[StageSpec]:
    """train (when LoRAs are trained here) -> gen -> sty, as the config asks."""
    st = config.stages
    training = config.lora.missing == "train"
    specs = []
    if training:
        specs.append(StageSpec(
            name="train", unit=STYLE, impl=st.train, verb="train", cost=st.train_cost,
            outputs=lambda t: {t.lora_file: _file_exists}, scratch=lambda t: (t.scratch_dir,),
            checks=(check_model,), progress_unit="step", inputs=lambda t: (t.style_dir / "images",),
            steps=config.train.steps, progress=scratch_progress))
    specs.append(StageSpec(
        name="gen", unit=PROMPT, impl=st.gen, verb="generate", needs=("train",) if training else (),
        outputs=lambda t: {t.content_latent: npy_is_complete, t.content_png: png_is_complete},
        handoffs=lambda t: (t.content_latent,), batch=config.producer.batch, cost=st.gen_cost, sharded=True,
        checks=(check_model,), style_checks=(check_lora,), inputs=lambda t: (t.lora_file,)))
    specs.append(StageSpec(
        name="sty", unit=PROMPT, impl=st.sty, verb="style",
        needs=("gen", "train") if training and config.consumer.use_lora else ("gen",),
        outputs=lambda t: {t.output_png: png_is_complete}, batch=config.consumer.batch, cost=st.sty_cost,
        checks=(check_model, check_layers), style_checks=(check_style_image,),
        inputs=lambda t: _style_inputs(config, t) + ((t.lora_file,) if config.consumer.use_lora else ())))
    return specs


def default_graph(config: RunConfig) -> Graph:
    return Graph(config, jstyleid_specs(config))


def without_checks(specs: List[StageSpec], impls: dict) -> List[StageSpec]:
    """The same stages with other implementations and no launch checks (stand-in stages need no model)."""
    return [replace(s, impl=impls.get(s.name, s.impl), checks=(), style_checks=()) for s in specs]


def build_graph(config: RunConfig) -> Graph:
    """The graph the config names (`stages.graph`, module:function of the config)."""
    module, _, name = config.stages.graph.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{config.source or '<defaults>'}: stages.graph = {config.stages.graph!r} cannot be "
                          f"loaded ({e}); name a module:function that builds the stage graph") from None
    return factory(config)


