"""A stand-in third stage for the stage-graph test: one `prep` job per style that must finish before that
style's generation. It is a declaration plus two classes; neither the queue nor the planner knows it."""
from dataclasses import replace
from pathlib import Path

from common.atomic import write_bytes
from common.devkit.fake_stage import FAKES, FakeGen
from common.graph import STYLE, Graph, StageSpec, jstyleid_specs, whole, without_checks


def marker(task) -> Path:
    return task.style_dir.parent.parent / "prep" / f"{task.style}.txt"


class FakePrep:
    """Writes one marker per style."""
    kind = "prep"

    def __init__(self, config, device):
        self.fsync = config.queue.fsync == "all"

    def run(self, tasks, beat):
        for task in tasks:
            beat("prep")
            write_bytes(marker(task), f"prepared {task.style}\n".encode(), fsync=self.fsync)


class CheckedGen(FakeGen):
    """Generation that refuses to run before its style's prep job is done."""

    def run(self, tasks, beat):
        missing = [t.style for t in tasks if not marker(t).is_file()]
        if missing:
            raise RuntimeError(f"gen ran before prep of style {missing[0]}")
        super().run(tasks, beat)


def graph(config) -> Graph:
    specs = without_checks(jstyleid_specs(config), dict(FAKES, gen="third_stage:CheckedGen"))
    prep = StageSpec(name="prep", unit=STYLE, impl="third_stage:FakePrep", verb="prepare",
                     outputs=lambda t: {marker(t): whole(Path.is_file)}, progress_unit="style")
    return Graph(config, [prep] + [replace(s, needs=s.needs + ("prep",)) if s.name == "gen" else s for s in specs])
