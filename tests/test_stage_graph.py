"""The stage graph: its declaration drives planning, the queue and the workers, so a third stage is a
declaration plus a stage class (tests/third_stage.py), with no change to the queue or the planner."""
import os

import pytest

from common.config import ConfigError
from common.graph import PROMPT, Graph, StageSpec, default_graph
from common.jobqueue.planner import plan
from queue_fixtures import REPO, check_invariants, graph_of, launch, write_config

THIRD = {"stages": {"graph": "third_stage:graph"}}
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def test_the_default_graph_is_gen_then_sty_and_balances_that_pair(tmp_path, tiny_model_files):
    config, graph, nodes, q = graph_of(write_config(tmp_path, stages={"graph": "common.graph:default_graph"},
                                                    model={"path": str(tiny_model_files)}))
    assert graph.stages == ("gen", "sty") and graph.flow() == ("gen", "sty")
    assert [n.job.stage for n in nodes].count("gen") == 6 and all(n.published_by for n in nodes if n.job.stage == "sty")


def test_a_stage_may_only_read_earlier_stages():
    from common.config import load_config
    bad = [StageSpec(name="late", unit=PROMPT, impl="x:Y", verb="do", needs=("later",)),
           StageSpec(name="later", unit=PROMPT, impl="x:Y", verb="do")]
    with pytest.raises(ConfigError, match="not an earlier stage"):
        Graph(load_config(), bad)
    assert default_graph(load_config()).stages == ("train", "gen", "sty")  # LoRAs are trained by default
    assert default_graph(load_config(None, {"lora.missing": "error"})).stages == ("gen", "sty")


def test_a_third_stage_plans_as_declared(tmp_path):
    config, graph, nodes, q = graph_of(write_config(tmp_path, **THIRD))
    assert graph.stages == ("prep", "gen", "sty")
    report = plan(q, nodes)
    assert report.queued == {"prep": 2, "gen": 6, "sty": 0}
    assert len(q.scan("prep")["pending"]) == 2 and len(q.scan("gen")["blocked"]) == 6
    assert not q.has_pending("gen")
    again = plan(q, nodes)
    assert sum(again.queued.values()) == 0 and again.in_queue == 8


def test_a_third_stage_runs_first_and_the_pipeline_completes_through_the_launcher(tmp_path):
    path = write_config(tmp_path, **THIRD)
    first = launch(path, env=ENV)
    assert first.returncode == 0, first.stderr
    assert "2 to prepare, 6 to generate, 0 to style" in first.stderr
    check_invariants(path)
    config, graph, nodes, q = graph_of(path)
    assert len(q.scan("prep")["done"]) == 2 and not q.failures()
    from common.jobqueue.job import read_job
    assert all(not read_job(p).errors for p in q.scan("gen")["done"].values())  # no gen ever ran before prep
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/prep.txt")) == ["00", "01"]
    again = launch(path, env=ENV)
    assert again.returncode == 0 and "6 finished, 0 failed; jobs: 0 to prepare, 0 to generate" in again.stderr
