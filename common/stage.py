"""What a worker runs: a Task, and the Stage interface every pipeline stage implements.

A worker builds its stage once (loading models, minutes), then feeds it batches of tasks of one style.
The stage writes each task's outputs itself, atomically (common.atomic), and raises on failure; the worker
marks a job done only after the stage returned and the outputs are in place.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Protocol


@dataclass(frozen=True)
class Task:
    """One unit of work: a style (train) or a (style, prompt) pair (gen, sty). Its identity comes from the
    job; its files are the ones its stage declares (`StageSpec.files`, by role: "content_png",
    "output_png", ...), derived from the config by the stage graph (common/graph.py), never read from a
    job file."""
    id: str  # deterministic: hash of what the job produces and the config's pixel hash
    style: str  # the style folder's name, e.g. "00" (a shared job's group: the prior stage's class set)
    prompt: Optional[str]  # as written in prompt.json (None for a per-style task)
    name: Optional[str]  # the prompt as a safe, unique file name, without .png (None for a per-style task)
    seed: int
    style_dir: Path  # DATASET/STYLE, holding images/ and prompt.json
    scratch_dir: Optional[Path] = None  # the job's working files (training checkpoints), kept across attempts
    files: Mapping[str, Path] = field(default_factory=dict)  # {role: path} its stage reads and writes
    made_by: Optional[bytes] = None  # the record its outputs carry (docs/queue.md §11): what made them


Beat = Callable[[str], None]


def style_of(tasks: List[Task]) -> str:
    """The one style of a batch: a stage runs tasks of one style (one LoRA, one style inversion)."""
    styles = {t.style for t in tasks}
    if len(styles) != 1:
        raise ValueError(f"a stage runs tasks of one style at a time, got styles {sorted(styles)}")
    return styles.pop()


class DeviceError(RuntimeError):
    """A stage cannot use its device (e.g. no CUDA): the worker exits 3 and its GPU slot is parked."""


class Stage(Protocol):
    kind: str  # "gen" or "sty"

    def run(self, tasks: List[Task], beat: Beat) -> None:
        """Produce every task's outputs (all of one style); call beat(phase) at least once per step."""
