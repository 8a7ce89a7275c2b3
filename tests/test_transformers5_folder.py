"""A model folder as diffusers >= 0.42 with transformers >= 5 writes it loads and samples like those
libraries (tests/golden/transformers5.npz, make_transformers5.py, run with a real transformers 5 install).

transformers 5 saves CLIPTextModel without the `text_model.` key prefix and its tokenizer as tokenizer.json
alone. The fixture lays the recorded folder out again: the JSON files as written (tokenizer.json's vocab and
merges put back from the assets, which the make script checked equal), the weight files with the recorded
keys, each tensor tiny_param of its key, exactly as written.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from common.devkit.assets.clip_bpe import clip_vocab_and_merges
from common.devkit.tiny_weights import tiny_param
from common.jittor_env import load_jittor
from common.sd.clip import CLIPTextModel, CLIPTokenizer, rename_text_encoder_keys
from common.sd.pipeline import StableDiffusion
from common.sd.weights import WeightFileError, load_state_dict
from guided_ddim import guided_ddim, rel_err

GOLDEN = np.load(Path(__file__).parent / "golden" / "transformers5.npz")
FILES, WEIGHTS = json.loads(str(GOLDEN["files"])), json.loads(str(GOLDEN["weights"]))
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers5") / "tiny-sd21"
    vocab, merges = clip_vocab_and_merges()
    for rel, text in FILES.items():
        if rel == "tokenizer/tokenizer.json":
            data = json.loads(text)
            data["model"].update(vocab=vocab, merges=[m.split(" ") for m in merges])
            text = json.dumps(data, ensure_ascii=False)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for rel, listing in WEIGHTS.items():
        save_file({k: tiny_param(k, shape).astype(dtype) for k, (shape, dtype) in listing.items()},
                  str(root / rel), metadata={"format": "pt"})
    return root


def test_the_recorded_folder_has_transformers5_layout():
    assert int(json.loads(str(GOLDEN["versions"]))["transformers"].split(".")[0]) >= 5
    assert not any(k.startswith("text_model.") for k in WEIGHTS["text_encoder/model.safetensors"])
    assert "tokenizer/tokenizer.json" in FILES and "tokenizer/vocab.json" not in FILES


def test_text_encoder_keys_without_prefix_are_renamed_to_ours(folder):
    model = CLIPTextModel(json.loads(FILES["text_encoder/config.json"]))
    file_keys = WEIGHTS["text_encoder/model.safetensors"]
    assert set(rename_text_encoder_keys(dict.fromkeys(file_keys))) == set(model.state_dict())
    # Already prefixed (transformers 4) keys stay as they are.
    ours = {k: None for k in model.state_dict()}
    assert rename_text_encoder_keys(ours) == ours
    state = {k: tiny_param(k, shape) for k, (shape, _) in file_keys.items()}
    with pytest.raises(WeightFileError, match="52 missing keys"):
        load_state_dict(model, state, "text_encoder/model.safetensors")
    load_state_dict(model, rename_text_encoder_keys(state), "text_encoder/model.safetensors")


def test_tokenizer_json_alone_gives_transformers5_ids(folder):
    ids = CLIPTokenizer.from_folder(folder / "tokenizer")(GOLDEN["prompts"].tolist())
    np.testing.assert_array_equal(ids, GOLDEN["ids"])


@pytest.fixture(scope="module")
def sd(folder):
    return StableDiffusion.load(folder, device="cpu")


def test_load_encodes_prompts_like_transformers5(sd):
    with load_jittor().no_grad():
        hidden = sd.text_encoder(GOLDEN["ids"][GOLDEN["encode_rows"]]).numpy()
    err = rel_err(hidden, GOLDEN["hidden"])
    print(f"transformers-5 text encoder rel max|diff| = {err:.2e}")
    assert err <= TOL


def test_load_and_guided_ddim_match_diffusers_042(sd):
    ours = guided_ddim(sd, GOLDEN)
    assert ours["timesteps"].tolist() == GOLDEN["pipe_timesteps"].tolist()
    errs = {"prompt embeds": rel_err(ours["embeds"], GOLDEN["pipe_embeds"]),
            "final latents": rel_err(ours["step_latents"][-1], GOLDEN["pipe_step_latents"][-1])}
    print("transformers-5 folder, StableDiffusion.load path rel max|diff|:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert max(errs.values()) <= TOL
    assert np.abs(ours["image"].astype(int) - GOLDEN["pipe_image"]).max() <= 1
