"""Weight files without torch: torch-zip .bin (read + write), safetensors, strict loading into modules."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from common.sd.weights import WeightFileError, load_state_dict, read_weights, save_torch_zip

GOLDEN = np.load(Path(__file__).parent / "golden" / "lora.npz")


def test_reads_a_file_written_by_torch_save(tmp_path):
    """lora.npz holds the bytes of diffusers' save_lora_weights(.bin) and of a torch.save of odd tensors."""
    (tmp_path / "odd.bin").write_bytes(GOLDEN["torch_odd_bin"].tobytes())
    odd = read_weights(tmp_path / "odd.bin")
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(odd["transposed"], grid.T) and odd["transposed"].flags.c_contiguous
    assert np.array_equal(odd["slice"], grid[1:, 1:])
    assert odd["half"].dtype == np.float16 and np.array_equal(odd["half"], [1.0, 2.0])
    assert odd["bfloat16"].dtype == np.float32 and np.array_equal(odd["bfloat16"], [1.5, -2.25])
    assert odd["scalar"].shape == () and odd["scalar"] == 3.0
    assert odd["long"].dtype == np.int64 and np.array_equal(odd["long"], [5, 6])


def test_torch_zip_round_trip(tmp_path):
    state = {"a.weight": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
             "b": np.float16([1.5, -2]), "c": np.array(7, dtype=np.int64)}
    save_torch_zip(state, tmp_path / "x.bin")
    back = read_weights(tmp_path / "x.bin")
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and back[k].shape == state[k].shape
        assert np.array_equal(back[k], state[k])


def test_our_writer_matches_torch_layout(tmp_path):
    """Same names inside the zip as torch.save writes (data.pkl, data/N, version, byteorder)."""
    save_torch_zip({"w": np.zeros(2, np.float32)}, tmp_path / "pytorch_lora_weights.bin")
    names = zipfile.ZipFile(tmp_path / "pytorch_lora_weights.bin").namelist()
    assert {n.split("/", 1)[1] for n in names} == {"data.pkl", "data/0", "version", "byteorder"}


def test_truncated_bin_is_one_line_error(tmp_path):
    save_torch_zip({"w": np.zeros(1000, np.float32)}, tmp_path / "w.bin")
    raw = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightFileError, match=r"cut\.bin.*(corrupt|re-save)") as e:
        read_weights(tmp_path / "cut.bin")
    assert "\n" not in str(e.value)


def test_pickle_with_foreign_globals_is_refused(tmp_path):
    import pickle
    with zipfile.ZipFile(tmp_path / "evil.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(WeightFileError, match="evil.bin"):
        read_weights(tmp_path / "evil.bin")


def test_corrupt_safetensors_is_one_line_error(tmp_path):
    save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "w.safetensors"))
    raw = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(raw[:-10])
    with pytest.raises(WeightFileError, match="bad.safetensors"):
        read_weights(tmp_path / "bad.safetensors")
    with pytest.raises(WeightFileError, match="not found"):
        read_weights(tmp_path / "missing.safetensors")


def _module():
    from common.jittor_env import load_jittor
    jt = load_jittor()

    class Block(jt.nn.Module):
        def __init__(self):
            self.proj = jt.nn.Linear(3, 2)
            self.norm = jt.nn.LayerNorm(2)

    return Block()


def _state(module):
    return {k: np.full(v.shape, i + 1.0, np.float32) for i, (k, v) in enumerate(module.state_dict().items())}


def test_load_state_dict_casts_fp16_files_to_the_module_dtype():
    module = _module()
    state = {k: v.astype(np.float16) for k, v in _state(module).items()}
    state["embeddings.position_ids"] = np.arange(3)  # ignored, as in CLIP checkpoints
    load_state_dict(module, state, "m.fp16.safetensors")
    for k, v in module.state_dict().items():
        assert str(v.dtype) == "float32" and np.array_equal(v.numpy(), state[k].astype(np.float32))


@pytest.mark.parametrize("damage, words", [
    (lambda s: s.pop("proj.weight"), "missing keys.*proj.weight"),
    (lambda s: s.update(extra=np.zeros(1, np.float32)), "unexpected keys.*extra"),
    (lambda s: s.update({"proj.weight": np.zeros((3, 3), np.float32)}), r"shape mismatches.*proj.weight \(3, 3\)"),
])
def test_load_state_dict_is_strict(damage, words):
    module = _module()
    state = _state(module)
    damage(state)
    with pytest.raises(WeightFileError, match="unet/x.safetensors: .*" + words) as e:
        load_state_dict(module, state, "unet/x.safetensors")
    assert "\n" not in str(e.value) and "config" in str(e.value)


def test_reads_jittor_save_layout(tmp_path):
    """jittor.save(.bin) names the zip folder after the file and uses int storage keys."""
    import io
    from common.sd import weights as w
    storage = w._Storage(0, np.arange(6, dtype=np.float32).reshape(2, 3))
    buffer = io.BytesIO()
    w._Pickler(buffer, protocol=2).dump({"k": w._TensorRef(storage)})
    with zipfile.ZipFile(tmp_path / "pytorch_lora_weights.bin", "w") as z:
        z.writestr("pytorch_lora_weights/data.pkl", buffer.getvalue())
        z.writestr("pytorch_lora_weights/data/0", storage.array.tobytes())
        z.writestr("pytorch_lora_weights/version", "3")
    assert np.array_equal(read_weights(tmp_path / "pytorch_lora_weights.bin")["k"], storage.array)
