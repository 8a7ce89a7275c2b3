"""Planning: prompts become safe unique names, bad datasets fail in one line, and planning queues exactly
what is missing (finished tasks skipped, existing content goes straight to stage 2, twice adds nothing)."""

from pathlib import Path

import numpy as np
import pytest

import launch
from common.atomic import write_bytes, write_npy, write_png
from common.dataset import DatasetError, read_dataset
from common.graph import STYLE, Graph, StageSpec, score_record, whole
from common.jobqueue.planner import plan
from common.jobqueue.queue import Queue
from common.naming import NamingError, prompt_names, safe_name
from common.provenance import write_png as write_result
from queue_fixtures import graph_of, tasks_of, write_config


def test_safe_name_keeps_readable_characters_and_replaces_the_rest():
    assert safe_name("A cat / dog?") == "A cat _ dog"
    assert safe_name("  Café,  l'été (2)  ") == "Café, l'été (2)"
    assert safe_name("a**b<>c") == "a_b_c"
    assert safe_name("..hidden") == "hidden"


def test_safe_name_caps_length_in_utf8_bytes():
    name = safe_name("é" * 200)
    assert len(name.encode()) <= 150 and name == "é" * 75


def test_colliding_prompts_get_a_stable_hash_suffix_on_the_later_one():
    names = prompt_names({"0": "cat?", "1": "cat!", "2": "Cat*"}, "p.json")
    assert names["0"] == "cat"
    assert names["1"].startswith("cat~") and len(names["1"]) == 8
    assert names["2"].startswith("Cat~") and len({n.lower() for n in names.values()}) == 3
    assert prompt_names({"0": "cat?", "1": "cat!"}, "p.json")["1"] == names["1"]


@pytest.mark.parametrize("prompt", ["???", "content", "contact_sheet", "CON", "  ..  "])
def test_empty_or_reserved_name_is_an_error_naming_prompt_json(prompt):
    with pytest.raises(NamingError, match=r"^styles/00/prompt.json: .*reword"):
        prompt_names({"0": prompt}, "styles/00/prompt.json")


def test_duplicate_prompt_text_is_an_error():
    with pytest.raises(NamingError, match="same text"):
        prompt_names({"0": "Dog", "1": "Dog"}, "p.json")


@pytest.mark.parametrize("breakage, match", [
    (lambda d: (d / "00" / "images" / "ref.png").unlink(), r"00/images: no images"),
    (lambda d: (d / "01" / "prompt.json").write_text("{not json"), r"01/prompt.json: not valid JSON"),
    (lambda d: (d / "01" / "prompt.json").write_text("[]"), r"01/prompt.json: expected a non-empty object"),
    (lambda d: (d / "01" / "prompt.json").unlink(), r"01/prompt.json: missing"),
    (lambda d: (d / "01" / "prompt.json").write_text('{"0": 3}'), r"prompt '0' must be a non-empty string"),
])
def test_bad_dataset_is_a_one_line_error_naming_the_file(tmp_path, breakage, match):
    path = write_config(tmp_path)
    breakage(tmp_path / "data")
    with pytest.raises(DatasetError, match=match) as err:
        tasks_of(path)
    assert "\n" not in str(err.value)


def test_a_missing_style_image_or_lora_is_an_error_at_launch_naming_the_path(tmp_path, tiny_model_files):
    real = {"stages": {"graph": "common.graph:default_graph"}, "model": {"path": str(tiny_model_files)}}
    with pytest.raises(DatasetError, match=r"00/images/nope.png: style image not found"):
        tasks_of(write_config(tmp_path, consumer={"style_image": "nope.png"}, **real))
    with pytest.raises(DatasetError, match=r"style_00: no LoRA for style 00 .*lora.missing: warn"):
        tasks_of(write_config(tmp_path, lora={"missing": "error", "dir": str(tmp_path / "loras")}, **real))


def test_a_lora_present_for_every_style_passes_the_launch_check(tmp_path, tiny_model_files):
    path = write_config(tmp_path, lora={"missing": "error", "dir": str(tiny_model_files / "loras")},
                        stages={"graph": "common.graph:default_graph"}, model={"path": str(tiny_model_files)})
    assert len(tasks_of(path)[1]) == 6


def test_task_paths_and_ids_follow_the_layout(tmp_path):
    config, tasks = tasks_of(write_config(tmp_path))
    assert len(tasks) == 6 and len({t.id for t in tasks}) == 6
    t = next(t for t in tasks if t.prompt == "A cat / dog?")
    assert t.files["output_png"] == (tmp_path / "out" / "00" / "A cat _ dog.png")
    assert t.files["content_png"] == (tmp_path / "out" / "00" / "content" / "A cat _ dog.png")
    assert t.files["content_latent"] == (tmp_path / "q" / "handoff" / "gen" / f"{t.id}.npy")
    assert [t.id for t in tasks_of(write_config(tmp_path))[1]] == [t.id for t in tasks]  # deterministic


def test_planning_twice_enqueues_nothing_new(tmp_path):
    config, graph, nodes, q = graph_of(write_config(tmp_path))
    first = plan(q, nodes)
    second = plan(q, nodes)
    assert (first.queued["gen"], second.queued["gen"], second.in_queue) == (6, 0, 6)
    assert len(q.scan("gen")["pending"]) == 6 and not q.scan("sty")["pending"]  # sty is published by gen


def test_finished_tasks_are_skipped_and_existing_content_goes_to_stage_two(tmp_path):
    config, graph, nodes, q = graph_of(write_config(tmp_path))
    tasks = tasks_of(write_config(tmp_path))[1]
    done, styled_only = tasks[0], tasks[1]
    gen_task = graph.task(next(n.job for n in nodes if n.job.stage == "gen" and n.job.id == styled_only.id))
    write_result(done.files["output_png"], np.zeros((4, 4, 3), np.uint8), done.made_by, fsync=False)
    write_result(styled_only.files["content_png"], np.zeros((4, 4, 3), np.uint8), gen_task.made_by, fsync=False)
    write_npy(styled_only.files["content_latent"], np.zeros((4, 8, 8), np.float32), fsync=False)
    report = plan(q, nodes)
    assert (report.finished, report.queued["sty"], report.queued["gen"]) == (1, 1, 4)
    assert set(q.scan("sty")["pending"]) == {styled_only.id}
    assert done.id not in q.scan("gen")["pending"] and styled_only.id not in q.scan("gen")["pending"]


def test_the_launch_line_counts_results_and_scored_styles_each_in_its_own_unit(tmp_path):
    config, graph, _, _ = graph_of(write_config(tmp_path))
    score = StageSpec(name="score", unit=STYLE, impl="unused:Score", verb="score", needs=("sty",),
                      files=score_record, outputs=lambda t: {t.files["score"]: whole(Path.is_file)})
    scored = Graph(config, graph.specs + [score])
    nodes = scored.nodes(read_dataset(scored.dataset))
    results = [scored.task(n.job) for n in nodes if n.job.stage == "sty"]
    for task in [t for t in results if t.style == "00"] + [next(t for t in results if t.style == "01")]:
        write_result(task.files["output_png"], np.zeros((4, 4, 3), np.uint8), task.made_by, fsync=False)
    write_bytes(Path(config.output) / "00" / "score.json", b"{}", fsync=False)  # style 00 scored
    report = plan(Queue(config.queue_dir, scored.rules(), fsync=False), nodes)
    assert (report.total, report.finished) == (2, 1)  # the final nodes are the styles' scores
    line = launch.plan_line(report, scored, [("cpu", "gen+sty+score")])
    # style 01's score reads its content images too, so the content of its finished result is made again
    assert line == ("6 result(s): 4 finished, 0 failed; 2 style score(s): 1 finished, 0 failed; "
                    "jobs: 3 to generate, 0 to style, 1 to score queued now, 0 already queued; "
                    "workers: cpu:gen+sty+score"), line
    assert launch.plan_line(plan(Queue(config.queue_dir, graph.rules(), fsync=False), graph.nodes(
        read_dataset(graph.dataset))), graph, []).startswith("6 result(s): 4 finished, 0 failed; jobs: ")


def test_truncated_output_is_removed_and_replanned(tmp_path):
    config, graph, nodes, q = graph_of(write_config(tmp_path))
    t = tasks_of(write_config(tmp_path))[1][0]
    write_png(t.files["output_png"], np.zeros((4, 4, 3), np.uint8), fsync=False)
    t.files["output_png"].write_bytes(t.files["output_png"].read_bytes()[:20])
    report = plan(q, nodes)
    assert report.queued["gen"] == 6 and not t.files["output_png"].exists()
    assert any("truncated output" in n for n in report.notes)
