"""FID, LPIPS and the histogram score equal the checker's libraries (tests/golden/score_cnn.npz,
make_score_cnn.py: torchmetrics, torch-fidelity, torchvision, OpenCV on random-weight files in the real
formats), and their weight files fail in one line."""
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from common.images import ImageError  # noqa: E402
from common.devkit.score_weights_cnn import (inception_shapes, score_param, write_inception,  # noqa: E402
                                             write_lpips_linear, write_squeezenet)
from common.score.errors import ScoreFileError  # noqa: E402
from common.score.fid import FidInception, frechet_distance  # noqa: E402
from common.score.hist import hsv_opencv, hist_score  # noqa: E402
from common.score.lpips import Lpips, preprocess, SHIFT, SCALE  # noqa: E402
from common.score.resize import jt, resize_antialias  # noqa: E402
from common.sd.weights import save_torch_zip  # noqa: E402
from score_cnn_data import write_dataset  # noqa: E402

GOLDEN = np.load(Path(__file__).parent / "golden" / "score_cnn.npz")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("score_cnn")
    paths = {"inception": root / "weights-inception-2015-12-05-6726825d.pth",
             "squeezenet": root / "squeezenet1_1-b8a52dc0.pth", "heads": root / "squeeze.pth"}
    write_inception(paths["inception"])
    write_squeezenet(paths["squeezenet"])
    write_lpips_linear(paths["heads"])
    return paths, write_dataset(root / "data")


def scale_error(ours, ref) -> float:
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def test_dataset_is_the_one_the_goldens_saw(files):
    _, styles = files
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for gens, refs in styles.values() for p in (*gens, *refs)]
    assert digests == GOLDEN["dataset_sha256"].tolist()


@pytest.mark.parametrize("name", ["down", "up", "mixed"])
def test_antialiased_resize_matches_torch(name):
    out = GOLDEN[f"resize_{name}_out"]
    ours = resize_antialias(jt.array(GOLDEN[f"resize_{name}_in"].astype(np.float32)), out.shape[2:]).numpy()
    assert ours.shape == out.shape and scale_error(ours, out) <= 1e-6


def test_fid_features_and_distance_match_torchmetrics(files):
    paths, styles = files
    network = FidInception.load(paths["inception"])
    refs = network.features([p for gens, refs in styles.values() for p in refs])
    gens = network.features([p for gens, refs in styles.values() for p in gens])
    errors = scale_error(refs, GOLDEN["fid_ref_features"]), scale_error(gens, GOLDEN["fid_gen_features"])
    fid = frechet_distance(refs, gens)
    print(f"fid features rel err {errors[0]:.2e} / {errors[1]:.2e}; fid {fid:.6f} vs {GOLDEN['fid']:.6f}")
    assert refs.dtype == np.float64 and refs.shape == GOLDEN["fid_ref_features"].shape and max(errors) <= 1e-4
    assert abs(fid - GOLDEN["fid"]) <= 1e-3 * abs(GOLDEN["fid"])


def test_frechet_distance_of_the_golden_features_is_torchmetrics():
    fid = frechet_distance(GOLDEN["fid_ref_features"], GOLDEN["fid_gen_features"])
    assert abs(fid - GOLDEN["fid"]) <= 1e-5 * abs(GOLDEN["fid"])
    same = frechet_distance(GOLDEN["fid_ref_features"], GOLDEN["fid_ref_features"])
    assert abs(same) < 1e-3 * abs(GOLDEN["fid"])


def test_fid_refuses_a_set_of_mixed_sizes(files):
    paths, styles = files
    network = FidInception.load(paths["inception"])
    gens, refs = styles["00"]
    with pytest.raises(ValueError) as error:
        network.features([refs[0], gens[0]])
    assert str(gens[0]) in str(error.value) and "share one size" in str(error.value)
    assert "\n" not in str(error.value)


def test_lpips_sees_the_pil_resize_the_checker_does(files):
    _, styles = files
    for name, path in (("gen", styles["00"][0][0]), ("ref", styles["00"][1][0])):
        expected = GOLDEN[f"lpips_resized_{name}"].astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255)
        assert np.array_equal(preprocess(path), ((expected * 2 - 1 - SHIFT) / SCALE)[0])


def test_lpips_layers_and_means_match_torchmetrics(files):
    paths, styles = files
    lpips = Lpips.load(paths["squeezenet"], paths["heads"])
    means = []
    for style, (gens, refs) in styles.items():
        layers = lpips.layer_distances(gens, refs)
        golden = GOLDEN[f"lpips_layers_{style}"]
        error = scale_error(layers, golden)
        print(f"lpips style {style}: layers rel err {error:.2e}")
        assert layers.shape == golden.shape and error <= 1e-4
        means.append(lpips.distance(gens, refs))
    assert np.allclose(means, GOLDEN["lpips_styles"], rtol=1e-3, atol=0)
    assert abs(np.mean(means) - GOLDEN["lpips"]) <= 1e-3 * GOLDEN["lpips"]


def test_hist_score_matches_opencv(files):
    _, styles = files
    scores = [hist_score(gens, refs) for gens, refs in styles.values()]
    print(f"hist {scores} vs {GOLDEN['hist_styles'].tolist()}")
    assert np.allclose(scores, GOLDEN["hist_styles"], rtol=1e-6, atol=0)
    assert abs(np.mean(scores) - GOLDEN["hist"]) <= 1e-6


def test_hsv_conversion_is_opencvs():
    assert np.array_equal(hsv_opencv(GOLDEN["hsv_colours"]), GOLDEN["hsv_opencv"])


def _inception_state():
    return {name: score_param(name, shape) for name, shape in inception_shapes().items()}


def _broken_files(folder: Path, paths: dict):
    """(loader argument name, file, words the error must say) for each kind of bad file."""
    truncated = folder / "truncated.pth"
    truncated.write_bytes(paths["inception"].read_bytes()[:5000])
    misshaped = folder / "misshaped.pth"
    state = _inception_state()
    state["Conv2d_2a_3x3.conv.weight"] = state["Conv2d_2a_3x3.conv.weight"][:16]
    save_torch_zip(state, misshaped)
    not_a_file = folder / "notes.txt"
    not_a_file.write_text("not weights")
    return [(folder / "absent.pth", "not found"), (truncated, "truncated"),
            (misshaped, "Conv2d_2a_3x3.conv.weight"), (paths["heads"], "is missing"), (not_a_file, "not a PyTorch")]


def test_bad_weight_files_are_one_line_errors(files, tmp_path):
    paths, _ = files
    for path, words in _broken_files(tmp_path, paths):
        with pytest.raises(ScoreFileError) as error:
            FidInception.load(path)
        message = str(error.value)
        assert str(path) in message and words in message and "\n" not in message, message
        assert "torch-fidelity" in message and "FID" in message
    with pytest.raises(ScoreFileError, match="LPIPS linear heads.*is missing"):
        Lpips.load(paths["squeezenet"], paths["squeezenet"])
    with pytest.raises(ScoreFileError, match="SqueezeNet.*not found"):
        Lpips.load(tmp_path / "absent.pth", paths["heads"])


def test_unreadable_images_are_one_line_errors(files, tmp_path):
    paths, styles = files
    gens, refs = styles["00"]
    broken = tmp_path / "Broken.png"
    broken.write_bytes(gens[0].read_bytes()[:200])
    network = FidInception.load(paths["inception"])
    for run in (lambda: hist_score([broken], refs), lambda: hist_score(gens, [tmp_path / "absent.png"]),
                lambda: network.features([broken, broken])):
        with pytest.raises(ImageError) as error:
            run()
        assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
