"""A stand-in third stage for the stage-graph test: one `prep` job per style, writing OUTPUT/STYLE/prep.txt,
that must finish before that style's generation. It is a declaration (its files included: generation
declares that it reads the marker too) plus two classes; neither the queue, the planner nor the graph's
generic part knows it."""
from dataclasses import replace
from pathlib import Path

from common.atomic import write_bytes
from common.devkit.fake_stage import FAKES, FakeGen
from common.graph import STYLE, Graph, StageSpec, jstyleid_specs, whole, without_checks


def prep_files(graph, task) -> dict:
    return {"prep_marker": graph.output / task.style / "prep.txt"}


class FakePrep:
    """Writes one marker per style."""
    kind = "prep"

    def __init__(self, config, device):
        self.fsync = config.queue.fsync == "all"

    def run(self, tasks, beat):
        for task in tasks:
            beat("prep")
            write_bytes(task.files["prep_marker"], f"prepared {task.style}\n".encode(), fsync=self.fsync)


class CheckedGen(FakeGen):
    """Generation that refuses to run before its style's prep job is done."""

    def run(self, tasks, beat):
        missing = [t.style for t in tasks if not t.files["prep_marker"].is_file()]
        if missing:
            raise RuntimeError(f"gen ran before prep of style {missing[0]}")
        super().run(tasks, beat)


def _reads_prep(spec: StageSpec) -> StageSpec:
    return replace(spec, needs=spec.needs + ("prep",), files=lambda g, t: {**spec.files(g, t), **prep_files(g, t)})


def graph(config) -> Graph:
    specs = without_checks(jstyleid_specs(config), dict(FAKES, gen="third_stage:CheckedGen"))
    prep = StageSpec(name="prep", unit=STYLE, impl="third_stage:FakePrep", verb="prepare", files=prep_files,
                     outputs=lambda t: {t.files["prep_marker"]: whole(Path.is_file)}, progress_unit="style")
    return Graph(config, [prep] + [_reads_prep(s) if s.name == "gen" else s for s in specs])
