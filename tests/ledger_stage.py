"""The stand-in stages, also noting "<stage> <id>" in the file $JSTYLEID_LEDGER each time a task's outputs
are written, so a fault test can check that no job was run to completion twice.

Config: `stages.graph: tests.ledger_stage:graph` (importable by workers: the repository is on their path).
"""
import os

from common.devkit.fake_stage import FakeGen, FakeSty
from common.graph import Graph, jstyleid_specs, without_checks


def _note(stage: str, task_id: str):
    fd = os.open(os.environ["JSTYLEID_LEDGER"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{stage} {task_id}\n".encode())  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)


class LedgerGen(FakeGen):
    def run(self, tasks, beat):
        for task in tasks:
            super().run([task], beat)
            _note("gen", task.id)


class LedgerSty(FakeSty):
    def run(self, tasks, beat):
        for task in tasks:
            super().run([task], beat)
            _note("sty", task.id)


def graph(config) -> Graph:
    return Graph(config, without_checks(jstyleid_specs(config), {"gen": "tests.ledger_stage:LedgerGen",
                                                                 "sty": "tests.ledger_stage:LedgerSty"}))


def runs(path) -> dict:
    """{(stage, id): how many times its outputs were written}."""
    counts = {}
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            stage, jid = line.split()
            counts[(stage, jid)] = counts.get((stage, jid), 0) + 1
    return counts
