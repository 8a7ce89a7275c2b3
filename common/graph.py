"""The pipeline as a declared graph of stages (docs/stage_graph.md).

Each stage declares its name, its unit of work (one job per style, or per style and prompt), which earlier
stages' outputs it reads, the files its jobs read and write (by role), its outputs among them (the truth
that a job is done), the hand-offs a later stage consumes and the working files to drop once it is done,
and the checks to run at launch. Everything else reads this
declaration: the planner expands it over the dataset into jobs, the queue learns from it what "done" means
and what to do on completion (`StageRules`), and the launcher, workers, status, progress and scheduling
take their stage names, batch sizes and costs from it. A new stage is a `StageSpec` plus a stage class.

    [prior (per class image of each distinct class prompt, shared by its styles; with train.prior)]
      -> train (per style when lora training is on; with train.pack one job shared by every style)
      -> gen (per prompt: content image + latent)  -> sty (per prompt: StyleID result)

Paths are never read from job files: a task's files are derived by its stage's declaration from the
config and the job's id, style and file name (both names checked to be plain), so a forged job cannot make
a worker write elsewhere.
"""
import contextlib
import hashlib
import importlib
import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from common.atomic import npy_is_complete
from common.captions import check_captions
from common.config import ConfigError, RunConfig
from common.dataset import DatasetError, Style
from common.identity import Identities, combined
from common.jobqueue.job import CorruptJob, Job
from common.jobqueue.layout import Layout
from common.jobqueue.planner import Node
from common.naming import name_problem
from common.provenance import FOREIGN, OK, PARTIAL, STALE, digest, png_made_by, record, why
from common.stage import Task

STYLE, PROMPT = "style", "prompt"  # units of work
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def plain_name(value, what: str) -> str:
    """A single path component we may write under (common.naming.name_problem)."""
    why = name_problem(value)
    if why:
        raise ValueError(f"{what} {value!r} is not a plain file name: it {why}")
    return value


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration. `files` takes the graph and the job's Task without files; the other
    functions take the Task with the files `files` declared."""
    name: str
    unit: str  # STYLE or PROMPT
    impl: str  # module:Class of the stage a worker builds (common.stage's contract)
    verb: str  # what the launcher says it queued: "6 to generate"
    needs: Tuple[str, ...] = ()  # earlier stages whose outputs its jobs read
    files: Callable[["Graph", Task], Dict[str, Path]] = lambda g, t: {}  # {role: path} its jobs read and write
    # {file: its state}: check(path, the record this run would write) -> common.provenance OK, MISSING, PARTIAL,
    # FOREIGN (whole, made by no record of ours) or STALE (made by another record)
    outputs: Callable[[Task], Dict[Path, Callable[[Path, Optional[bytes]], str]]] = lambda t: {}
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
    made_of: Callable[[Task], Dict[str, Path]] = lambda t: {}  # {name: input file} its outputs' records name
    recipe: Optional[Callable[[RunConfig], str]] = None  # the settings its records name (default: pixel_hash)
    # jobs styles share (class images): (group, [payload]) for a style, the group its jobs are filed under and
    # their payloads ({"prompt", "name", "seed"}); styles with the same group share the jobs, whose ids hash
    # the stage's recipe instead of the pixel hash, so settings they do not read leave them done
    shared: Optional[Callable[[RunConfig, Style], Tuple[str, List[dict]]]] = None


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

    def superseded(self, job: Job) -> Optional[str]:
        """Why the job's whole outputs do not count (`settings`, `lora changed`, `no provenance`), or None."""
        task = self._task(job)
        return self.graph.superseded(self.spec, task) if task else None

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
        return [p for p, state in self.graph.output_states(self.spec, task).items() if state == PARTIAL] if task else []

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
        self.identities = Identities(self.layout.identities)
        self.trust_existing = False  # count outputs without provenance as done (launch.py --trust-existing)
        self.check_provenance = True  # False: no records; whole outputs count, as before provenance (benchmarks)
        self._memo: Optional[dict] = None  # while planning: records' parts per (stage, style)

    # -- the declaration ------------------------------------------------------------------------------
    @property
    def stages(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def results(self) -> str:
        """The stage whose outputs are the results the user asked for: the last per-prompt stage (a
        per-style stage after it, such as the score, reports on them)."""
        return next((s.name for s in reversed(self.specs) if s.unit == PROMPT), self.specs[-1].name)

    def spec(self, name: str) -> StageSpec:
        return next(s for s in self.specs if s.name == name)

    def rules(self) -> dict:
        return {s.name: _Rules(self, s) for s in self.specs}

    def followers(self, name: str) -> List[StageSpec]:
        """Later stages of the same unit that read `name`: a completion publishes their job (1:1 edge)."""
        unit = self.spec(name).unit
        return [s for s in self.specs if name in s.needs and s.unit == unit]

    def flow(self) -> Tuple[str, str]:
        """(upstream, downstream) of the last 1:1 edge, which back-pressure and elastic home stages balance."""
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
        plan = spec.recipe(self.config) if spec.shared and spec.recipe else self.plan
        jid = style_id(spec.name, style, plan) if spec.unit == STYLE else \
            item_id(style, payload["prompt"], payload["seed"], plan)
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
        task = Task(id=job.id, style=style, prompt=prompt, name=name, seed=seed, style_dir=self.dataset / style,
                    scratch_dir=self.layout.scratch_dir(job.stage, job.id))
        task = replace(task, files=dict(spec.files(self, task)))
        return replace(task, made_by=self.made_by(spec, task) if self.check_provenance else None)

    def task_to_run(self, job: Job) -> Task:
        """The task of a job a worker claimed: `task`, and no folder between the output folder and one of its
        files is a symbolic link (planted after the launch check); CorruptJob otherwise, so nothing is
        written through it. Checked once per claim."""
        task = self.task(job)
        for path in task.files.values():
            folder = path.parent
            while self.output in folder.parents:
                if folder.is_symlink():
                    raise CorruptJob(f"{job.stage} job {job.id}: {folder} is a symbolic link; results are written "
                                     "only inside the output folder")
                folder = folder.parent
        return task

    # -- provenance (docs/queue.md §11) ---------------------------------------------------------------
    @contextlib.contextmanager
    def planning(self):
        """One state of the inputs for a whole plan: each file's identity and each style's record parts
        are found once, not once per task."""
        with self.identities.frozen():
            self._memo = {}
            try:
                yield self
            finally:
                self._memo = None

    def _memoized(self, key, make):
        if self._memo is None:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def made_by(self, spec: StageSpec, task: Task) -> bytes:
        """The record this run writes with the task's outputs: the settings' hash, the job (the style, for a
        per-style stage), and the identity of the model and of every file it and the stages before it on
        the same unit read (a result names the LoRA its content image was made with)."""
        settings = spec.recipe(self.config) if spec.recipe else self.plan
        inputs = self._memoized((spec.name, task.style), lambda: self._inputs(spec, task))
        return record(settings, task.style if spec.unit == STYLE else task.id, inputs)

    def _inputs(self, spec: StageSpec, task: Task) -> dict:
        inputs = {"model": self.identities.model(self.config.model.path)}
        chain = [spec]
        while chain:
            s = chain.pop()
            files = task if s is spec else replace(task, files=dict(s.files(self, task)))  # the same job's, upstream
            for name, path in s.made_of(files).items():
                inputs[name] = self.identities.of(path) if not self._to_be_made(s, path, files) else "to be made"
            chain += [self.spec(up) for up in s.needs if self.spec(up).unit == spec.unit]
        return inputs

    def _to_be_made(self, spec: StageSpec, path: Path, task: Task) -> bool:
        """Whether `path` is the output of an earlier per-style job that has yet to run (a LoRA to be
        trained, or trained again): what is made from it now is not made from what this run makes."""
        for up in (self.spec(u) for u in spec.needs if self.spec(u).unit == STYLE):
            group = up.shared(self.config, Style(task.style, task.style_dir, ()))[0] if up.shared else task.style
            job = self.job(up, group, {})
            up_task = self.task(job)
            if path in up.outputs(up_task) and not self._memoized(("ok", up.name, task.style),
                                                                  lambda: self.outputs_ok(up, up_task)):
                return True
        return False

    def output_states(self, spec: StageSpec, task: Task) -> Dict[Path, str]:
        made_by = task.made_by
        if made_by is None and self.check_provenance:
            made_by = self.made_by(spec, task)
        return {path: check(path, made_by) for path, check in spec.outputs(task).items()}

    def outputs_ok(self, spec: StageSpec, task: Task) -> bool:
        """Every output is whole and made by what this run would make it with (docs/queue.md §11); one
        without provenance counts only with --trust-existing."""
        trusted = (OK, FOREIGN) if self.trust_existing else (OK,)
        if not self.check_provenance:
            trusted = (OK, FOREIGN, STALE)
        return all(state in trusted for state in self.output_states(spec, task).values())

    def superseded(self, spec: StageSpec, task: Task) -> Optional[str]:
        """Why whole outputs of the task are not counted, in a few words, or None."""
        for path, state in self.output_states(spec, task).items():
            if state == FOREIGN and not self.trust_existing:
                return "no provenance"
            if state == STALE:
                return why(made_record(path, self.identities), task.made_by)
        return None

    def results_made_by(self, tasks: List[Task]) -> str:
        """One value for the provenance of a set of results (a style's images, the final stage's tasks): a
        later stage that reads them (scores) records it, and any changed result changes it."""
        return combined(sorted((t.name or t.style, digest(t.made_by)) for t in tasks))

    # -- planning -------------------------------------------------------------------------------------
    def units(self, spec: StageSpec, style: Style) -> Tuple[str, List[Tuple[Optional[str], dict]]]:
        """The group a stage's jobs for `style` are filed under, and each job's (unit key, payload): one
        per-style job, one per prompt, or the jobs a `shared` stage declares (other styles may share them)."""
        if spec.shared is not None:
            group, payloads = spec.shared(self.config, style)
            return group, [(p.get("name"), p) for p in payloads]  # a per-style job's unit key is None
        if spec.unit == STYLE:
            return style.name, [(None, {})]
        seed = self.config.producer.seed
        return style.name, [(p.key, {"prompt": p.text, "name": p.name, "seed": seed}) for p in style.prompts]

    def nodes(self, styles: List[Style]) -> List[Node]:
        """Every job the dataset asks of every stage, with its prerequisites, in stage order; a shared job
        once, however many styles read it."""
        nodes = []
        keys = {}  # (stage, group, unit key or None) -> job key
        publisher = {}  # job key -> the key of the job whose completion publishes it
        units = {(s.name, style.name): self.units(s, style) for s in self.specs for style in styles}

        def in_order(key):  # a published job is waited for after its publishers: queued by then
            return in_order(publisher[key]) + [key] if key in publisher else [key]
        for spec in self.specs:
            for style in styles:
                group, jobs = units[(spec.name, style.name)]
                for unit, payload in jobs:
                    if (spec.name, group, unit) in keys:
                        continue  # shared with an earlier style
                    needs, published_by = [], None
                    for up in spec.needs:
                        upstream = self.spec(up)
                        up_group, up_jobs = units[(up, style.name)]
                        if upstream.unit == spec.unit:
                            published_by = keys[(up, up_group, unit)]
                            needs.append(published_by)
                        elif upstream.unit == STYLE:
                            needs.append(keys[(up, up_group, None)])
                        else:  # a per-style stage reading a per-prompt one waits for all its prompts
                            for up_unit, _ in up_jobs:
                                needs += [k for k in in_order(keys[(up, up_group, up_unit)]) if k not in needs]
                    job = self.job(spec, group, payload)
                    keys[(spec.name, group, unit)] = job.key
                    if published_by is not None:
                        publisher[job.key] = published_by
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
    """The style's LoRA file: the existing one the gen stage will read, else where training writes it (with
    train.pack, the packed LoRA for every style)."""
    from common.style_files import lora_folder, lora_path
    return lora_path(config, style) or lora_folder(config, style) / config.lora.names[0]


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
        from common.sd.single_file import is_single_file
        model = config.model.path
        others.append(("model.path", Path(model) if is_single_file(model) else resolve_model_folder(model)))
    except (OSError, ValueError):  # no such model: its own check says so
        pass
    for key, folder in others:
        relation = _relation(queue, folder.resolve())
        if relation:
            what = "file" if folder.is_file() else "folder"
            raise ConfigError(f"{_where(config)}: queue_dir {queue} {relation} the {key} {what} {folder.resolve()}; "
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


def made_record(path: Path, identities: Identities) -> Optional[bytes]:
    """The record an output carries: in its PNG text chunk, or for a LoRA in provenance.json beside it."""
    from common.provenance import lora_made_by
    return png_made_by(path) if path.suffix == ".png" else lora_made_by(path, identities.of(path))


def whole(is_complete: Callable[[Path], bool]) -> Callable[[Path, Optional[bytes]], str]:
    """The check of an output that carries no record (a hand-off inside the queue folder): whole or not."""
    from common.provenance import MISSING
    return lambda path, made_by: OK if is_complete(path) else MISSING if not path.exists() else PARTIAL


def lora_check(identities: Identities) -> Callable[[Path, Optional[bytes]], str]:
    """A LoRA counts when it is ours and made by this recipe from these images and model, or when it is
    the user's (no record of ours: used as it is, never overwritten); one of ours made otherwise is STALE."""
    from common.provenance import MISSING, lora_made_by

    def check(path: Path, made_by: Optional[bytes]) -> str:
        if not path.is_file():
            return MISSING
        found = lora_made_by(path, identities.of(path))
        return OK if found is None or found == made_by else STALE
    return check


def scratch_progress(task: Task) -> Optional[dict]:
    """A job's progress.json in its scratch folder ({"step", "steps", "loss"}), if it wrote one."""
    try:
        data = json.loads((task.scratch_dir / "progress.json").read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and all(type(data.get(k)) is int for k in ("step", "steps"))
    return data if ok else None


def lora_files(graph: Graph, task: Task) -> Dict[str, Path]:
    """The style's LoRA: training writes it, generation (and StyleID with consumer.use_lora) reads it."""
    return {"lora_file": lora_target(graph.config, task.style)}


def class_image_file(graph: Graph, task: Task) -> Dict[str, Path]:
    """The prior stage's output: one class image, LORA_DIR/prior/GROUP/NNNN.png (common/prior.py)."""
    from common.prior import class_folder
    return {"class_image": class_folder(graph.config, task.style) / f"{task.name}.png"}


def class_images_of(graph: Graph, task: Task) -> Dict[str, Path]:
    """The folder of the class images a style trains beside (prior preservation)."""
    from common.prior import class_folder, class_group, class_prompt
    return {"class_images": class_folder(graph.config, class_group(class_prompt(graph.config, task.style)))}


def content_files(graph: Graph, task: Task) -> Dict[str, Path]:
    """Generation's outputs: OUTPUT/STYLE/content/NAME.png and its final latent, a hand-off in the queue."""
    return {"content_png": graph.output / task.style / "content" / f"{task.name}.png",
            "content_latent": graph.layout.handoff_path("gen", task.id, ".npy")}


def result_files(graph: Graph, task: Task) -> Dict[str, Path]:
    """StyleID's output: OUTPUT/STYLE/NAME.png."""
    return {"output_png": graph.output / task.style / f"{task.name}.png"}


def score_record(graph: Graph, task: Task) -> Dict[str, Path]:
    """The score stage's output: the style's score record, OUTPUT/STYLE/score.json."""
    return {"score": graph.output / task.style / "score.json"}


def scoring(config: RunConfig) -> Tuple[bool, List[str]]:
    """(whether the score stage runs, the files it lacks): `eval.enabled` false: never; true: always (the
    launch check refuses missing files); unset: when every file is found (common/score/files.py)."""
    if config.eval.enabled is False:
        return False, []
    from common.score.files import find_score_files
    _, missing = find_score_files(config.eval)
    return config.eval.enabled is True or not missing, missing


def check_score_files(config: RunConfig):
    """eval.enabled is true: every file the score reads is found."""
    _, missing = scoring(config)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{_where(config)}: eval.enabled is true but {missing[0]}{more}; set the eval: paths, "
                          "or eval.enabled: false")


def _record_is_current(path: Path) -> bool:
    from common.score.record import record_is_current
    return record_is_current(path)


def _style_inputs(config: RunConfig, task: Task) -> Tuple[Path, ...]:
    from common.style_files import style_image_path
    try:
        return (style_image_path(task.style_dir, config.consumer.style_image),)
    except FileNotFoundError:
        return (task.style_dir / "images",)


def jstyleid_specs(config: RunConfig) -> List[StageSpec]:
    """prior (class images, with train.prior) -> train (when LoRAs are trained here) -> gen -> sty -> score
    (when its files are found), as the config asks."""
    from common.pack import pack_job, pack_styles
    from common.prior import class_jobs
    from common.provenance import png_state
    dataset = Path(config.dataset).resolve()
    st = config.stages
    training, use_lora = config.lora.missing == "train", config.consumer.use_lora
    prior = training and config.train.prior is not None
    specs = []
    if prior:  # one job per class image of each distinct class prompt, shared by its styles
        specs.append(StageSpec(
            name="prior", unit=PROMPT, impl=st.prior, verb="make as class images", files=class_image_file,
            outputs=lambda t: {t.files["class_image"]: png_state}, batch=config.producer.batch, cost=st.prior_cost,
            sharded=True, checks=(check_model,), recipe=RunConfig.class_image_hash, shared=class_jobs))
    if training:
        trained = lora_check(Identities())
        # with train.pack: one job over every style's images (common/pack.py), its record naming each folder
        images_of = (lambda t: {f"images {name}": dataset / name / "images" for name in pack_styles(dataset)}) \
            if config.train.pack else (lambda t: {"images": t.style_dir / "images"})
        specs.append(StageSpec(
            name="train", unit=STYLE, impl=st.train, verb="train", needs=("prior",) if prior else (),
            cost=st.train_cost, files=lambda g, t: {**lora_files(g, t), **(class_images_of(g, t) if prior else {})},
            outputs=lambda t: {t.files["lora_file"]: trained}, scratch=lambda t: (t.scratch_dir,),
            checks=(check_model,), style_checks=(check_captions,), progress_unit="step",
            inputs=lambda t: tuple(images_of(t).values()), steps=config.train.steps, progress=scratch_progress,
            made_of=lambda t: {**images_of(t), **({"class images": t.files["class_images"]} if prior else {})},
            recipe=RunConfig.train_hash, shared=pack_job if config.train.pack else None))
    specs.append(StageSpec(
        name="gen", unit=PROMPT, impl=st.gen, verb="generate", needs=("train",) if training else (),
        files=lambda g, t: {**lora_files(g, t), **content_files(g, t)},
        outputs=lambda t: {t.files["content_latent"]: whole(npy_is_complete), t.files["content_png"]: png_state},
        handoffs=lambda t: (t.files["content_latent"],), batch=config.producer.batch, cost=st.gen_cost,
        sharded=True, checks=(check_model,), style_checks=(check_lora,), inputs=lambda t: (t.files["lora_file"],),
        made_of=lambda t: {"lora": t.files["lora_file"]}))
    specs.append(StageSpec(
        name="sty", unit=PROMPT, impl=st.sty, verb="style",
        needs=("gen", "train") if training and use_lora else ("gen",),
        files=lambda g, t: {**content_files(g, t), **result_files(g, t), **(lora_files(g, t) if use_lora else {})},
        outputs=lambda t: {t.files["output_png"]: png_state}, batch=config.consumer.batch, cost=st.sty_cost,
        checks=(check_model, check_layers), style_checks=(check_style_image,),
        inputs=lambda t: _style_inputs(config, t) + ((t.files["lora_file"],) if use_lora else ()),
        made_of=lambda t: {"style image": _style_inputs(config, t)[0]}))
    if scoring(config)[0]:  # a record current while every image it scored is unchanged (docs/score.md)
        specs.append(StageSpec(
            name="score", unit=STYLE, impl=st.score, verb="score", needs=("sty",), files=score_record,
            outputs=lambda t: {t.files["score"]: whole(_record_is_current)}, cost=st.score_cost,
            checks=(check_score_files,), progress_unit="style", inputs=lambda t: (t.style_dir / "images",)))
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


