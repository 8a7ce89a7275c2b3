"""The score's ViTs (DINOv2 for dino_score, CLIP for clip_r_score) equal transformers 4.57's on the devkit's
random-weight folders, preprocessing included (tests/golden/score_vit.npz, make_score_vit.py)."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.devkit.score_weights_vit import CLIP_LARGE, DINO_BASE, clip_shapes, dinov2_shapes, write_clip, write_dino
from common.images import ImageError
from common.jittor_env import load_jittor
from common.score.clip_r import ClipR, read_words
from common.score.dino import Dino, dino_similarity
from common.score.clip_vision import CLIPModel
from common.score.dinov2 import Dinov2Model, bicubic_matrix
from common.score.errors import ScoreFileError

jt = load_jittor()
GOLDEN = np.load(Path(__file__).parent / "golden" / "score_vit.npz")
WORDS_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clip_r_prompts.txt"
N_GEN = 2  # as make_score_vit.py: the first images are the generated ones, the rest the references


def rel_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score_vit")
    paths = []
    for i, (name, mode) in enumerate(zip(GOLDEN["image_names"].tolist(), GOLDEN["image_modes"].tolist())):
        Image.fromarray(GOLDEN[f"image_{i}"], mode=mode).save(tmp / name)
        paths.append(tmp / name)
    return {"images": paths, "dino": write_dino(tmp / "dino"), "clip": write_clip(tmp / "clip")}


@pytest.fixture(scope="module")
def dino(files):
    return Dino.load(files["dino"])


@pytest.fixture(scope="module")
def clip_r(files):
    return ClipR.load(files["clip"])


def transformers_pixels(levels: np.ndarray, mean, std) -> np.ndarray:
    """transformers' rescale and normalize of the stored uint8 levels (make_score_vit.py checks them bit for
    bit against the processor's own output)."""
    scaled = (levels.astype(np.float64) * (1 / 255)).astype(np.float32)
    shape = (1, 3, 1, 1)
    return (scaled - np.array(mean, np.float32).reshape(shape)) / np.array(std, np.float32).reshape(shape)


def test_the_devkit_writes_the_goldens_weights_bit_for_bit(files):
    for name in ("dino", "clip"):
        digest = hashlib.sha256((files[name] / "model.safetensors").read_bytes()).hexdigest()
        assert digest == str(GOLDEN[f"{name}_sha256"]), name


def test_preprocessing_equals_the_slow_processors(dino, clip_r, files):
    for processor, key in ((dino.processor, "dino"), (clip_r.processor, "clip")):
        ref = transformers_pixels(GOLDEN[f"{key}_levels"], processor.image_mean, processor.image_std)
        ours = processor.batch(files["images"])
        assert ours.shape == ref.shape and ours.dtype == np.float32
        assert np.array_equal(ours, ref), f"{key}: max |diff| {np.abs(ours - ref).max()}"
    assert dino.processor.size == {"shortest_edge": 256} and clip_r.processor.size == {"shortest_edge": 224}


@pytest.mark.parametrize("rows, cols", [(16, 16), (12, 20)])
def test_bicubic_matrix_equals_torch_interpolate(rows, cols):
    grid = GOLDEN["bicubic_in"]
    ours = np.einsum("ri,cj,dij->drc", bicubic_matrix(37, rows), bicubic_matrix(37, cols), grid)
    assert rel_err(ours, GOLDEN[f"bicubic_{rows}x{cols}"]) <= 1e-6


def test_dinov2_pooler_output_and_dino_similarity(dino, files):
    pooled = dino.embed(files["images"])
    err = rel_err(pooled, GOLDEN["dino_pooled"])
    print(f"dinov2 pooler_output rel max|diff| = {err:.2e}")
    assert pooled.shape == GOLDEN["dino_pooled"].shape and err <= 1e-4
    similarity = dino_similarity(pooled[:N_GEN], pooled[N_GEN:])
    assert abs(similarity - float(GOLDEN["dino_similarity"])) <= 1e-3 * abs(float(GOLDEN["dino_similarity"]))


def test_dino_similarity_averages_references_then_images():
    gen = np.array([[1.0, 0.0], [0.0, 2.0]])
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    per_gen = [np.mean([1, np.sqrt(0.5), 0]), np.mean([0, np.sqrt(0.5), -1])]
    assert dino_similarity(gen, ref) == pytest.approx(np.mean(per_gen))


def test_clip_embeddings_and_tokens(clip_r, files):
    images = clip_r.image_embeds(files["images"])
    err = rel_err(images, GOLDEN["clip_image_embeds"])
    print(f"clip image_embeds rel max|diff| = {err:.2e}")
    assert images.shape == GOLDEN["clip_image_embeds"].shape and err <= 1e-4
    texts = GOLDEN["clip_texts"].tolist()
    np.testing.assert_array_equal(clip_r.tokenizer(texts, longest=True), GOLDEN["clip_text_ids"])
    err = rel_err(clip_r.text_embeds(texts), GOLDEN["clip_text_embeds"])
    print(f"clip text_embeds rel max|diff| = {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("key", ["small", "checker"])
def test_clip_r_probabilities_and_hits_equal_the_checker(clip_r, files, key):
    words = GOLDEN["clip_texts"].tolist() if key == "small" else read_words(WORDS_FILE)
    for i, (texts, probs) in enumerate(clip_r.probabilities(files["images"], words)):
        ref = GOLDEN[f"clip_r_{key}_probs_{i}"]
        assert len(texts) == len(ref) and rel_err(probs, ref) <= 1e-3, (key, i)
    hits = clip_r.hits(files["images"], words)
    assert hits.dtype == np.bool_
    np.testing.assert_array_equal(hits, GOLDEN[f"clip_r_{key}_hits"])


def test_read_words_as_the_checker(tmp_path):
    words = read_words(WORDS_FILE)
    assert len(words) == 216 and len(set(words)) == 215 and "ice cream" in words and words[-1] == "lobster"
    assert all(w == w.strip().lower() for w in words)
    with pytest.raises(ScoreFileError, match="missing .*clip_r_prompts.txt.*eval.clip_r_prompts"):
        read_words(tmp_path / "clip_r_prompts.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ScoreFileError, match="empty"):
        read_words(tmp_path / "empty.txt")


def one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and all(p in message for p in parts), message


def test_missing_or_corrupt_files_are_one_line(files, tmp_path):
    with pytest.raises(ScoreFileError) as e:
        Dino.load(tmp_path / "nowhere")
    one_line(e, "nowhere", "DINOv2")
    broken = shutil.copytree(files["dino"], tmp_path / "dino")
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    with pytest.raises(ScoreFileError) as e:
        Dino.load(broken)
    one_line(e, str(broken / "model.safetensors"), "DINOv2")
    (broken / "model.safetensors").unlink()
    with pytest.raises(ScoreFileError) as e:
        Dino.load(broken)
    one_line(e, "model.safetensors: missing", "download")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ScoreFileError) as e:
        Dino.load(broken)
    one_line(e, str(broken / "config.json"))
    clip = shutil.copytree(files["clip"], tmp_path / "clip")
    (clip / "preprocessor_config.json").write_text('{"size": "big"}')
    with pytest.raises(ScoreFileError) as e:
        ClipR.load(clip)
    one_line(e, str(clip / "preprocessor_config.json"), "size")
    (clip / "vocab.json").unlink()
    with pytest.raises(ScoreFileError) as e:
        ClipR.load(clip)
    one_line(e, "vocab.json", "tokenizer")


def test_an_unreadable_image_is_one_line(dino, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError) as e:
        dino.embed([tmp_path / "bad.png"])
    one_line(e, str(tmp_path / "bad.png"), "re-export")


@pytest.mark.parametrize("key, build, shapes, config", [
    ("dino_base", Dinov2Model, dinov2_shapes, DINO_BASE), ("clip_large", CLIPModel, clip_shapes, CLIP_LARGE)])
def test_real_architectures_have_transformers_keys_and_shapes(key, build, shapes, config):
    ref = dict(zip(GOLDEN[f"{key}_keys"].tolist(), GOLDEN[f"{key}_shapes"].tolist()))
    # torch's scalar logit_scale has shape (), a Jittor scalar (1,)
    ours = {k: "" if k == "logit_scale" else ",".join(map(str, v.shape)) for k, v in build(config).state_dict().items()}
    assert ours == ref
    assert {k: ",".join(map(str, s)) for k, s in shapes(config).items()} == ref
