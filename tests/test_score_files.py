"""Where the score's files are found (common/score/files.py) and when the score stage runs (common/graph.py)."""
from dataclasses import replace
from pathlib import Path

import pytest

from common.config import ConfigError, EvalConfig, load_config
from common.graph import check_score_files, default_graph, scoring
from common.score.files import INCEPTION_FILE, SQUEEZENET_FILE, find_score_files


def hf_repo(cache: Path, repo: str, marker: str):
    snap = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / marker).write_text("{}")
    (cache / ("models--" + repo.replace("/", "--")) / "refs").mkdir()
    (cache / ("models--" + repo.replace("/", "--")) / "refs" / "main").write_text("abc")
    return snap


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Every file where the checker's libraries keep it: HF cache, torch hub, ~/.cache/clip; the word list."""
    hub = tmp_path / "hf" / "hub"
    for repo, marker in (("facebook/dinov2-base", "config.json"), ("openai/clip-vit-large-patch14", "config.json"),
                         ("openai/clip-vit-base-patch16", "vocab.json")):
        hf_repo(hub, repo, marker)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in (INCEPTION_FILE, SQUEEZENET_FILE):
        (checkpoints / name).write_bytes(b"x")
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "clip" / "RN50.pt").write_bytes(b"x")
    (tmp_path / "squeeze.pth").write_bytes(b"x")
    (tmp_path / "words.txt").write_text("Cat\nDog")
    return tmp_path


def test_every_file_is_found_in_the_libraries_caches(caches):
    files, missing = find_score_files(EvalConfig(lpips_linear=str(caches / "squeeze.pth"),
                                                 clip_r_prompts=str(caches / "words.txt")))
    assert missing == []
    assert files.dino.parent.parent.name == "models--facebook--dinov2-base"
    assert files.fid_inception.name == INCEPTION_FILE and files.clip_iqa.name == "RN50.pt"


def test_a_missing_file_is_one_line_naming_it_and_the_metric_it_blocks(caches):
    (caches / "torch" / "hub" / "checkpoints" / INCEPTION_FILE).unlink()
    files, missing = find_score_files(EvalConfig(lpips_linear=str(caches / "squeeze.pth"),
                                                 clip_r_prompts=str(caches / "words.txt")))
    assert files is None and len(missing) == 1
    assert INCEPTION_FILE in missing[0] and "fid_score" in missing[0] and "eval.fid_inception" in missing[0]
    assert "\n" not in missing[0]


def test_the_word_list_must_be_configured(caches):
    _, missing = find_score_files(EvalConfig(lpips_linear=str(caches / "squeeze.pth")))
    assert any("eval.clip_r_prompts" in m and "clip_r_score" in m for m in missing)


def test_a_configured_path_wins_over_the_cache(caches, tmp_path):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"x")
    files, _ = find_score_files(EvalConfig(fid_inception=str(mine), lpips_linear=str(caches / "squeeze.pth"),
                                           clip_r_prompts=str(caches / "words.txt")))
    assert files.fid_inception == mine


def test_scoring_is_on_when_every_file_is_found_off_otherwise(caches):
    found = EvalConfig(lpips_linear=str(caches / "squeeze.pth"), clip_r_prompts=str(caches / "words.txt"))
    config = replace(load_config(None), eval=found)
    assert scoring(config)[0] and "score" in default_graph(config).stages
    assert default_graph(config).results == "sty"  # the per-style score reports on the results
    lacking = replace(config, eval=replace(found, clip_r_prompts=None))
    assert not scoring(lacking)[0] and "score" not in default_graph(lacking).stages
    assert not scoring(replace(config, eval=replace(found, enabled=False)))[0]


def test_enabled_true_refuses_to_launch_without_the_files(caches):
    config = replace(load_config(None), eval=EvalConfig(enabled=True))
    with pytest.raises(ConfigError, match=r"eval.enabled is true but .*\(and 1 more\)"):
        check_score_files(config)


def test_eval_section_reads_from_yaml_and_leaves_the_pixel_hash_alone(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  enabled: false\n  dino: /models/dino\n")
    config = load_config(path)
    assert config.eval.enabled is False and config.eval.dino == "/models/dino"
    assert config.pixel_hash() == load_config(None).pixel_hash()
    path.write_text("eval:\n  dinov2: x\n")
    with pytest.raises(ConfigError, match="unknown key 'dinov2'"):
        load_config(path)
