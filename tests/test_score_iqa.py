"""CLIP-IQA (common/score/clip_iqa.py) equals torchmetrics' CLIPImageQualityAssessment with piq's CLIP RN50
(tests/golden/make_score_iqa.py); the development kit's archive layout reads back, and crafted archives are
refused in one line (real torch.jit archives: tests/test_torchscript.py)."""
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.devkit.score_weights_iqa import SMALL, rn50_shapes, write_clip_rn50, write_clip_tokenizer
from common.score.errors import ScoreFileError
from common.sd.torchscript import read_torchscript, save_module_tree
from common.sd.weights import WeightFileError
from score_iqa_data import write_images

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = np.load(GOLDEN_DIR / "score_iqa.npz")


@pytest.fixture(scope="module")
def iqa(tmp_path_factory):
    from common.score.clip_iqa import ClipIqa
    work = tmp_path_factory.mktemp("iqa")
    model = ClipIqa.load(write_clip_rn50(work / "RN50.pt"), write_clip_tokenizer(work / "tokenizer"))
    return model, write_images(work / "images")


def scale(x):
    return float(np.abs(x).max())


def test_the_anchors_are_torchmetrics(iqa):
    model, _ = iqa
    assert np.abs(model.anchors - GOLDEN["anchors"]).max() <= 1e-4 * scale(GOLDEN["anchors"])


@pytest.mark.parametrize("group", ["square", "wide"])
def test_image_features_at_their_own_size_are_piqs(iqa, group):
    model, images = iqa
    ours, theirs = model.image_features(images[group]), GOLDEN[f"{group}_image_features"]
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-4 * scale(theirs)


@pytest.mark.parametrize("group", ["square", "wide"])
def test_scores_are_torchmetrics_clip_iqa(iqa, group):
    model, images = iqa
    theirs = GOLDEN[f"{group}_scores"]
    assert theirs.min() > 0.2 and theirs.max() < 0.8 and np.ptp(theirs) > 0.01  # the golden is not degenerate
    np.testing.assert_allclose(model.scores(images[group]), theirs, rtol=1e-3)


def test_our_module_tree_layout_round_trips(tmp_path):
    state = {"a.b.weight": np.arange(6, dtype=np.float16).reshape(2, 3), "c": np.ones(4, np.float32)}
    save_module_tree(state, tmp_path / "m.pt")
    read = read_torchscript(tmp_path / "m.pt")
    assert set(read) == set(state) and all(np.array_equal(read[k], v) for k, v in state.items())


def crafted(tmp_path, payload: bytes) -> Path:
    path = tmp_path / "RN50.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("RN50/data.pkl", payload)
    return path


@pytest.mark.parametrize("payload, why", [
    (pickle.dumps({"a": 1}, protocol=2), "does not hold a TorchScript module"),
    (b"\x80\x02cos\nsystem\nq\x00.", "refused"),
    (b"\x80\x02c__torch__.m\nM\nq\x00)\x81q\x01K\x05b.", "not a dict of names"),
])
def test_crafted_archives_are_one_line_errors(tmp_path, payload, why):
    with pytest.raises(WeightFileError, match=why) as e:
        read_torchscript(crafted(tmp_path, payload))
    assert "\n" not in str(e.value) and "RN50.pt" in str(e.value)


def test_a_storage_reaching_outside_its_member_is_refused(tmp_path):
    save_module_tree({"w": np.ones(4, np.float32)}, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["m/data/0"] = members["m/data/0"][:8]  # half the declared bytes
    with zipfile.ZipFile(tmp_path / "m.pt", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(WeightFileError, match="declares 16 bytes"):
        read_torchscript(tmp_path / "m.pt")


def test_a_missing_or_wrong_archive_is_a_score_file_error(tmp_path):
    from common.score.clip_iqa import ClipIqa
    tokenizer = write_clip_tokenizer(tmp_path / "tok")
    with pytest.raises(ScoreFileError, match="RN50.pt: CLIP-IQA's CLIP RN50 not found"):
        ClipIqa.load(tmp_path / "RN50.pt", tokenizer)
    shapes = rn50_shapes(SMALL)
    shapes.pop("text_projection")
    save_module_tree({k: np.zeros(v, np.float16) for k, v in shapes.items()}, tmp_path / "RN50.pt")
    with pytest.raises(ScoreFileError, match="not a ResNet CLIP archive"):
        ClipIqa.load(tmp_path / "RN50.pt", tokenizer)
