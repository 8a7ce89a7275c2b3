"""A style's score record and what a run shows (common/score/record.py, report.py, chart.py, history.py)."""
import html
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from common.dataset import read_dataset
from common.score.chart import (COLOURS, HISTORY_HEAD, HISTORY_SCALE, MARGIN, ROW, SCALE, bars, chart,
                                history_bars, term)
from common.score.formula import StyleParts
from common.score.history import HISTORY, MAX_RUNS, add_to_history, read_history
from common.score.record import read_record, record_is_current, write_record
from common.score.report import publish


def parts(seed):
    rng = np.random.default_rng(seed)
    return StyleParts(dino=0.5, hist=0.6, lpips=0.3, clip_iqa=0.7, hits=np.array([True, False]),
                      features=rng.normal(size=(2, 4)), ref_features=rng.normal(size=(3, 4)))


@pytest.fixture
def run(tmp_path):
    """Two styles of two prompts each, their images, and a record per style."""
    data, out = tmp_path / "data", tmp_path / "out"
    for style in ("00", "01"):
        (data / style / "images").mkdir(parents=True)
        Image.new("RGB", (8, 8), "red").save(data / style / "images" / "a.png")
        (data / style / "prompt.json").write_text(json.dumps({"0": "Cat", "1": "Dog & 'Co'"}))
        (out / style / "content").mkdir(parents=True)
    for style in read_dataset(data):
        for name in (p.name for p in style.prompts):
            for folder in (out / style.name, out / style.name / "content"):
                Image.new("RGB", (8, 8), "blue").save(folder / f"{name}.png")
    return data, out


def record(out, style, seed=0):
    images = sorted((out / style).glob("*.png")) + sorted((out / style / "content").glob("*.png"))
    write_record(out / style / "score.json", {"result": parts(seed), "content": parts(seed + 1)}, images,
                 fsync=False)


def test_a_record_reads_back_and_is_current_until_an_image_changes(run):
    _, out = run
    record(out, "00")
    assert read_record(out / "00" / "score.json")["result"].dino == 0.5
    assert record_is_current(out / "00" / "score.json")
    image = out / "00" / "Cat.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert not record_is_current(out / "00" / "score.json")


def test_a_record_naming_a_file_outside_its_folder_is_not_current(run):
    _, out = run
    path = out / "00" / "score.json"
    path.write_text(json.dumps({"parts": {}, "images": {"../01/Cat.png": [1, 1]}}))
    assert not record_is_current(path)
    path.write_text("{not json")
    assert not record_is_current(path)
    with pytest.raises(ValueError, match="not a score record"):
        read_record(path)


def config_of(data, out, tmp_path, plan="a1b2c3d4e5f60718"):
    """What publish reads of a RunConfig; `plan` stands for the pixel settings' hash."""
    return type("C", (), {"output": str(out), "dataset": str(data), "lora": type("L", (), {
        "dir": str(tmp_path / "style"), "subdir": "style_{style}"}), "queue": type("Q", (), {"fsync": False}),
        "pixel_hash": lambda self: plan})()


def test_publish_waits_for_every_style(run, tmp_path):
    data, out = run
    config = config_of(data, out, tmp_path)
    styles = read_dataset(data)
    record(out, "00")
    lines = publish(config, styles)
    assert len(lines) == 1 and "1 of 2 style(s) not scored" in lines[0] and not (out / "scores.json").exists()
    record(out, "01", seed=5)
    lines = publish(config, styles)
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["per_style"]) == {"00", "01"} and "content" in scores
    assert scores["clip_r_score"] == pytest.approx(0.5) and scores["final_score"] > 0
    assert any(line.startswith("overall") for line in lines)
    page = (out / "report.html").read_text()
    assert "href='00/Cat.png'" in page and "../data/00/images/a.png" in page
    name = read_dataset(data)[0].prompts[1].name
    assert "'" in name and f"title='{html.escape(name, quote=True)}.png'" in page  # names are escaped
    assert f"{name}.png" not in page
    assert Image.open(out / "scores.png").size[0] > 100


def combined_of(styles):
    """The shape report.combine_records gives: {kind: overall keys + per_style}."""
    def row(dino, lpips, fid, final):
        return {"dino_score": dino, "hist_score": 0.5, "fid_score": fid, "lpip_score": lpips,
                "clip_iqa_score": 0.4, "clip_r_score": 0.5, "final_score": final}
    return {kind: dict(row(0.6 + shift, 0.3, 5.0, 0.3 + shift),
                       per_style={s: row(0.5 + shift, 0.2 + shift, fid, 0.25 + shift) for s, fid in styles.items()})
            for kind, shift in (("content", 0.0), ("result", 0.1))}


def test_each_metric_is_drawn_as_its_term_in_the_final_score():
    assert term("lpip_score", 0.3) == pytest.approx(0.7) and term("lpip_score", 1.4) == 0.0
    assert term("fid_score", 5.0) == pytest.approx(0.75) and term("fid_score", 31.0) == 0.0
    assert term("dino_score", 0.6) == 0.6 and term("fid_score", math.nan) is None and term("hist_score", None) is None


def test_the_chart_has_a_bar_per_style_metric_and_kind_where_the_picture_says(tmp_path):
    combined = combined_of({"00": 4.0, "Starry night": math.nan})  # one image a side: the style's own FID is n/a
    drawn = bars(combined)
    assert {b.row for b in drawn} == {"00", "Starry night", "overall"} and len(drawn) == 3 * 7 * 2
    by = {(b.row, b.panel, b.kind): b for b in drawn}
    assert by[("00", "lpip_score", "result")].value == pytest.approx(0.7)
    assert by[("00", "fid_score", "content")].value == pytest.approx(0.8)
    assert by[("overall", "final_score", "result")].value == pytest.approx(0.4)
    assert by[("Starry night", "fid_score", "result")].value is None
    image = np.asarray(chart(combined))
    for bar in drawn:
        x0, y0, x1, y1 = bar.box
        middle = (y0 + y1) // 2
        if bar.value is None:  # "n/a" written, no bar
            assert not (image[y0:y1 + 1, x0:x0 + SCALE] == COLOURS[bar.kind]).all(axis=-1).any(), bar
            continue
        assert tuple(image[middle, x0]) == tuple(image[middle, x1]) == COLOURS[bar.kind], bar
        assert tuple(image[middle, x1 + 1]) != COLOURS[bar.kind], bar
        assert x1 - x0 + 1 == round(SCALE * bar.value), bar  # the same scale in every panel


def test_publish_keeps_the_final_score_of_each_set_of_settings_and_charts_them(run, tmp_path):
    data, out = run
    styles = read_dataset(data)
    record(out, "00")
    record(out, "01", seed=5)
    publish(config_of(data, out, tmp_path, plan="aaaa000011112222"), styles)
    alone = Image.open(out / "scores.png").size
    publish(config_of(data, out, tmp_path, plan="aaaa000011112222"), styles)  # the same settings, scored again
    assert [e["plan"] for e in read_history(out)] == ["aaaa000011112222"]
    assert Image.open(out / "scores.png").size == alone  # one set of settings: no history panel
    publish(config_of(data, out, tmp_path, plan="bbbb000011112222"), styles)
    runs = read_history(out)
    final = json.loads((out / "scores.json").read_text())
    assert [e["plan"] for e in runs] == ["aaaa000011112222", "bbbb000011112222"]
    assert runs[-1]["result"] == pytest.approx(final["final_score"]) and runs[-1]["styles"] == 2
    assert runs[-1]["content"] == pytest.approx(final["content"]["final_score"])
    picture = np.asarray(Image.open(out / "scores.png").convert("RGB"))
    assert picture.shape[0] > alone[1]
    top = picture.shape[0] - MARGIN - HISTORY_HEAD - 2 * ROW  # the history panel ends the picture
    for bar in history_bars(runs, top):
        x0, y0, x1, y1 = bar.box
        middle = (y0 + y1) // 2
        assert tuple(picture[middle, x0]) == tuple(picture[middle, x1]) == COLOURS[bar.kind], bar
        assert tuple(picture[middle, x1 + 1]) != COLOURS[bar.kind], bar
        assert x1 - x0 + 1 == round(HISTORY_SCALE * bar.value), bar


def test_a_damaged_history_is_started_afresh_and_kept_short(tmp_path):
    combined = combined_of({"00": 4.0})
    (tmp_path / HISTORY).write_text("{not json")
    assert read_history(tmp_path) == []
    (tmp_path / HISTORY).write_text(json.dumps([{"plan": 3}, "x", {"plan": "p", "time": "t", "result": "high"},
                                                {"plan": "old", "time": "2026-01-01", "result": 0.1, "content": None}]))
    assert [e["plan"] for e in read_history(tmp_path)] == ["old"]
    for i in range(MAX_RUNS + 3):
        runs = add_to_history(tmp_path, f"plan{i}", combined, fsync=False)
    assert len(runs) == MAX_RUNS and runs[-1]["plan"] == f"plan{MAX_RUNS + 2}" and read_history(tmp_path) == runs
