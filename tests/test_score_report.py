"""A style's score record and what a run shows (common/score/record.py, report.py)."""
import html
import json
import os

import numpy as np
import pytest
from PIL import Image

from common.dataset import read_dataset
from common.score.formula import StyleParts
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


def test_publish_waits_for_every_style(run, tmp_path):
    data, out = run
    config = type("C", (), {"output": str(out), "dataset": str(data), "lora": type("L", (), {
        "dir": str(tmp_path / "style"), "subdir": "style_{style}"}), "queue": type("Q", (), {"fsync": False})})
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
