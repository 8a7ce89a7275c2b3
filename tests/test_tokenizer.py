"""CLIPTokenizer (built on `tokenizers`) gives transformers' CLIPTokenizer ids exactly (tests/golden/clip.npz)."""
import json
from pathlib import Path

import numpy as np
import pytest

from common.devkit.assets.clip_bpe import clip_vocab_and_merges, write_tokenizer_folder
from common.sd.clip import CLIPTokenizer

GOLDEN = np.load(Path(__file__).parent / "golden" / "clip.npz")
PROMPTS = [str(p) for p in GOLDEN["prompts"]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {"sd2": write_tokenizer_folder(root / "sd2", pad_token="!"),
            "sd1": write_tokenizer_folder(root / "sd1", pad_token="<|endoftext|>")}


def test_vocabulary_has_clip_size_and_ids():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["a</w>"], vocab["cat</w>"]) == (49406, 49407, 320, 2368)


def test_folder_files_have_hub_sizes(folders):
    assert (folders["sd2"] / "merges.txt").stat().st_size == 524619
    assert (folders["sd2"] / "vocab.json").stat().st_size == 1059962


def test_known_prompts(folders):
    ids = CLIPTokenizer.from_folder(folders["sd2"])(["a cat", "A  Cat in style_00"])
    assert ids.dtype == np.int32 and ids.shape == (2, 77)
    assert ids[0, :5].tolist() == [49406, 320, 2368, 49407, 0]
    assert ids[1, :10].tolist() == [49406, 320, 2368, 530, 1844, 318, 271, 271, 49407, 0]


@pytest.mark.parametrize("variant", ["sd2", "sd1"])
def test_ids_equal_transformers(folders, variant):
    ids = CLIPTokenizer.from_folder(folders[variant])(PROMPTS)
    expected = GOLDEN[f"ids_{variant}"]
    for prompt, got, want in zip(PROMPTS, ids, expected):
        assert got.tolist() == want.tolist(), prompt


def test_long_prompt_truncates_to_77_ending_with_eos(folders):
    ids = CLIPTokenizer.from_folder(folders["sd2"])(["word " * 200])
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_missing_file_names_it(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        CLIPTokenizer.from_folder(tmp_path)


def test_corrupt_vocab_names_the_file(tmp_path):
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)


def write_tokenizer_json(folder, merges_as_pairs: bool, pad_token: str):
    """A transformers-5-style tokenizer folder: tokenizer.json (BPE vocab + merges) and tokenizer_config.json."""
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    model = {"type": "BPE", "vocab": vocab, "merges": [m.split(" ") for m in merges] if merges_as_pairs else merges}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": model}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": pad_token, "model_max_length": 77}))
    return folder


@pytest.mark.parametrize("merges_as_pairs", [True, False])
def test_tokenizer_json_alone_gives_transformers_ids(tmp_path, merges_as_pairs):
    # SD 1.x padding (<|endoftext|>) here; the SD 2.x pad "!" from tokenizer.json: test_transformers5_folder.py.
    folder = write_tokenizer_json(tmp_path / "tok", merges_as_pairs, "<|endoftext|>")
    np.testing.assert_array_equal(CLIPTokenizer.from_folder(folder)(PROMPTS), GOLDEN["ids_sd1"])


def test_bad_tokenizer_json_names_the_file(tmp_path):
    folder = write_tokenizer_json(tmp_path / "tok", True, "!")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["merges"][5] = ["a", "b", "c"]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer\.json: model\.merges holds \['a', 'b', 'c'\]"):
        CLIPTokenizer.from_folder(folder)
    data["model"] = {"type": "WordPiece", "vocab": {}}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a BPE tokenizer"):
        CLIPTokenizer.from_folder(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"vocab\.json: missing \(and no tokenizer\.json\)"):
        CLIPTokenizer.from_folder(folder)
