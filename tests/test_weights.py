"""Weight files without torch: torch-zip .bin (read + write), safetensors, strict loading into modules."""
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import weight_fuzz as wf
from safetensors.numpy import save_file

from common.sd.weights import (WeightFileError, inspect_weights, load_state_dict, read_weights, save_torch_legacy,
                               save_torch_zip)

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


def test_equal_tensors_written_at_different_times_give_equal_files(tmp_path, monkeypatch):
    """A retrained LoRA equal to the last one keeps its identity (a content hash), so its results stand."""
    import time
    state = {"w": np.arange(6, dtype=np.float32)}
    first, second = tmp_path / "1" / "lora.bin", tmp_path / "2" / "lora.bin"
    first.parent.mkdir()
    second.parent.mkdir()
    save_torch_zip(state, first)
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)  # an hour on, what zipfile would stamp
    save_torch_zip(state, second)
    assert first.read_bytes() == second.read_bytes()
    assert zipfile.ZipFile(first).read("lora/byteorder") == b"little"


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


# ---- hostile files: every check runs in a child process (tests/weight_fuzz.py), so a crash fails a test ----


def _child(*args, timeout=120):
    """(exit status, JSON lines) of tests/weight_fuzz.py run in a fresh interpreter."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(wf.__file__)), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode <= 1 and "Traceback" not in done.stderr, (
        f"the child died (exit status {done.returncode}) reading {lines[-1] if lines else '?'}: {done.stderr[-2000:]}")
    return done.returncode, lines


def _check_in_child(paths):
    """{file name: check result}; a crash in the child fails naming the file it was reading."""
    _, lines = _child("check", *paths)
    return {Path(r["file"]).name: r for r in lines if "read" in r}


S = wf.Storage
T = wf.Tensor
HOSTILE_BINS = {  # name: (tensors, zip members, words the one-line refusal must contain)
    # the crash that started this: a (2^20, 64) view with stride 2^30 over a 16-float storage
    "huge_stride": ({"t": T(S(), 0, (2**20, 64), (2**30, 1))}, {"0": wf.floats(16)}, "outside its storage"),
    "past_the_end": ({"t": T(S(), 0, (4, 5), (5, 1))}, {"0": wf.floats(16)}, "outside its storage"),
    "negative_stride": ({"t": T(S(), 15, (4,), (-1,))}, {"0": wf.floats(16)}, "stride"),
    "negative_size": ({"t": T(S(), 0, (-4,), (1,))}, {"0": wf.floats(16)}, "size"),
    "negative_offset": ({"t": T(S(), -4, (4,), (1,))}, {"0": wf.floats(16)}, "offset"),
    "huge_size": ({"t": T(S(), 0, (2**70,), (0,))}, {"0": wf.floats(16)}, "size"),
    "overflowing_product": ({"t": T(S(), 0, (2**32, 2**32), (0, 0))}, {"0": wf.floats(16)}, "more values"),
    "offset_beyond": ({"t": T(S(), 17, (1,), (1,))}, {"0": wf.floats(16)}, "outside its storage"),
    "empty_offset_beyond": ({"t": T(S(), 100, (0,), (1,))}, {"0": wf.floats(16)}, "outside its storage"),
    "broadcast_bomb": ({"t": T(S(numel=1), 0, (2**20, 2**20), (0, 0))}, {"0": wf.floats(1)}, "more values"),
    "float_size": ({"t": T(S(), 0, (2.5,), (1,))}, {"0": wf.floats(16)}, "size"),
    "string_stride": ({"t": T(S(), 0, (4,), ("1",))}, {"0": wf.floats(16)}, "stride"),
    "int_size": ({"t": T(S(), 0, 4, (1,))}, {"0": wf.floats(16)}, "size"),
    "none_offset": ({"t": T(S(), None, (4,), (1,))}, {"0": wf.floats(16)}, "offset"),
    "rank_mismatch": ({"t": T(S(), 0, (4, 4), (1,))}, {"0": wf.floats(16)}, "stride"),
    "too_many_dims": ({"t": T(S(), 0, (1,) * 40, (1,) * 40)}, {"0": wf.floats(16)}, "dimensions"),
    "not_a_storage": ({"t": T("0", 0, (4,), (1,))}, {"0": wf.floats(16)}, "storage"),
    "missing_key": ({"t": T(S(key="7"), 0, (4,), (1,))}, {"0": wf.floats(16)}, "data/7.*not in the zip"),
    "twin_dtypes": ({"a": T(S(), 0, (4,), (1,)), "b": T(S(numel=32, kind="HalfStorage"), 0, (4,), (1,))},
                    {"0": wf.floats(16)}, "storage 0.*twice"),
    "numel_vs_member": ({"t": T(S(numel=20), 0, (4,), (1,))}, {"0": wf.floats(16)}, "declares 80 bytes.*64"),
    "absurd_numel": ({"t": T(S(numel=2**40), 0, (4,), (1,))}, {"0": wf.floats(16)}, "declares 4398046511104"),
    "negative_numel": ({"t": T(S(numel=-1), 0, (4,), (1,))}, {"0": wf.floats(16)}, "numel"),
    "odd_storage_type": ({"t": T(S(kind="EvilStorage"), 0, (4,), (1,))}, {"0": wf.floats(16)}, "EvilStorage"),
    "bad_persistent_id": ({"t": T(S(tag="module"), 0, (4,), (1,))}, {"0": wf.floats(16)}, "persistent id"),
    "short_persistent_id": ({"t": T(S(extra=()), 0, (4,), (1,))}, {"0": wf.floats(16)}, "persistent id"),
    "many_views": ({f"t{i}": T(S(), 0, (16,), (1,)) for i in range(3)}, {"0": wf.floats(16)}, "twice"),
    "nested": ({"t": {"u": T(S(), 0, (4,), (1,))}}, {"0": wf.floats(16)}, "flat"),
}


def test_hostile_torch_zips_are_refused_in_one_line(tmp_path):
    paths = [wf.craft_bin(tmp_path / f"{name}.bin", tensors, members)
             for name, (tensors, members, _) in HOSTILE_BINS.items()]
    results = _check_in_child(paths)
    for name, (_, _, words) in HOSTILE_BINS.items():
        result = results[f"{name}.bin"]
        assert result["violation"] is None, (name, result["violation"])
        for what in ("read", "inspect"):
            status, message = result[what]
            assert status == "error" and re.search(words, message), (name, what, result[what])


def test_torch_legacy_round_trip(tmp_path):
    """torch < 1.6's layout (the LPIPS heads ship in it); the reference script loads ours with torch."""
    state = {"lin0.model.1.weight": np.random.default_rng(1).random((1, 8, 1, 1)).astype(np.float32),
             "b": np.float16([1.5, -2]), "c": np.array(7, dtype=np.int64)}
    save_torch_legacy(state, tmp_path / "squeeze.pth")
    assert not zipfile.is_zipfile(tmp_path / "squeeze.pth")
    back = read_weights(tmp_path / "squeeze.pth")
    assert list(back) == list(state) and all(np.array_equal(back[k], state[k]) for k in state)
    assert all(back[k].dtype == state[k].dtype for k in state)
    assert inspect_weights(tmp_path / "squeeze.pth") == {k: (v.dtype, v.shape) for k, v in state.items()}


LS = wf.LegacyStorage
HOSTILE_LEGACY = {  # name: (tensors, {key: (count, bytes)}, keys or None, magic, words of the refusal)
    "legacy_terabyte": ({"t": T(LS(numel=2**38), 0, (2**38,), (1,))}, {"0": (2**38, wf.floats(16))}, None,
                        wf.weights._LEGACY_MAGIC, "more bytes than the file holds"),
    "legacy_truncated": ({"t": T(LS(), 0, (16,), (1,))}, {"0": (16, wf.floats(8))}, None,
                         wf.weights._LEGACY_MAGIC, "more bytes than the file holds"),
    "legacy_count": ({"t": T(LS(), 0, (16,), (1,))}, {"0": (15, wf.floats(16))}, None,
                     wf.weights._LEGACY_MAGIC, "header disagrees"),
    "legacy_undeclared": ({"t": T(LS(), 0, (16,), (1,))}, {"0": (16, wf.floats(16)), "9": (1, wf.floats(1))},
                          None, wf.weights._LEGACY_MAGIC, "never declares"),
    "legacy_no_data": ({"t": T(LS(), 0, (16,), (1,))}, {}, None, wf.weights._LEGACY_MAGIC, "has no data"),
    "legacy_magic": ({"t": T(LS(), 0, (16,), (1,))}, {"0": (16, wf.floats(16))}, None, 12345,
                     "not a PyTorch checkpoint"),
    "legacy_view": ({"t": T(LS(view=("1", 0, 4)), 0, (4,), (1,))}, {"0": (16, wf.floats(16))}, None,
                    wf.weights._LEGACY_MAGIC, "persistent id"),
    "legacy_global": ({"t": print}, {}, None, wf.weights._LEGACY_MAGIC, "could run code"),
    "legacy_outside": ({"t": T(LS(), 8, (16,), (1,))}, {"0": (16, wf.floats(16))}, None,
                       wf.weights._LEGACY_MAGIC, "outside its storage"),
}


def test_hostile_legacy_files_are_refused_in_one_line(tmp_path):
    paths = [wf.craft_legacy(tmp_path / f"{name}.pth", tensors, storages, keys, magic)
             for name, (tensors, storages, keys, magic, _) in HOSTILE_LEGACY.items()]
    results = _check_in_child(paths)
    for name, (*_, words) in HOSTILE_LEGACY.items():
        result = results[f"{name}.pth"]
        assert result["violation"] is None, (name, result["violation"])
        for what in ("read", "inspect"):
            status, message = result[what]
            assert status == "error" and re.search(words, message), (name, what, result[what])


def test_views_inside_the_storage_are_read_exactly(tmp_path):
    """The bounds checks let through every legal view: strided, offset, broadcast within the storage, empty."""
    grid = np.arange(32, dtype=np.float32)
    views = {"t": ((3,), (5,), 1), "col": ((4, 2), (4, 1), 2), "zero": ((4, 3), (1, 0), 0),
             "empty": ((0, 5), (5, 1), 32), "last": ((), (), 31), "t2": ((4, 4), (1, 4), 0)}
    tensors = {k: T(S(numel=32), off, size, stride) for k, (size, stride, off) in views.items()}
    path = wf.craft_bin(tmp_path / "views.bin", tensors, {"0": grid.tobytes()})
    result = _check_in_child([path])["views.bin"]
    assert result["violation"] is None and result["read"][0] == "ok", result
    state = read_weights(path)
    for name, (size, stride, off) in views.items():
        expected = np.lib.stride_tricks.as_strided(grid[off:], size, [4 * s for s in stride]) if size else grid[off]
        assert state[name].shape == size and np.array_equal(state[name], expected), name


def test_memory_bombs_are_refused_before_allocating(tmp_path):
    """Claims of terabytes in a 1 KB file: refused by the size checks, not by running out of memory (the
    child has a 2 GiB address-space limit, so an attempted allocation would show as MemoryError)."""
    files = []
    bomb = {"t": T(S(numel=2**38), 0, (2**38,), (1,))}  # a 2^40-byte storage over 64 bytes
    files.append(wf.craft_bin(tmp_path / "claims_a_terabyte.bin", bomb, {"0": wf.floats(16)}))
    normal = wf.craft_bin(tmp_path / "n.bin", {"t": T(S(), 0, (16,), (1,))}, {"0": wf.floats(16)}).read_bytes()
    for name, member in (("member_declares_4g.bin", "/0"), ("pickle_declares_4g.bin", "data.pkl")):
        (tmp_path / name).write_bytes(wf.set_declared_size(normal, member, 2**32 - 1))
        files.append(tmp_path / name)
    pickle_bombs = {"bytes_claims_a_terabyte.bin": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.",
                    "memo_slot_2e31.bin": b"\x80\x02}r" + struct.pack("<I", 2**31 - 1) + b"."}
    for name, data in pickle_bombs.items():  # the C unpickler allocates what these claim before reading
        files.append(wf.craft_bin(tmp_path / name, {}, {}, pickle_bytes=data))
    header = json.dumps({"t": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}).encode()
    (tmp_path / "claims_a_terabyte.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    save_file({"w": np.ones(4, np.float32)}, str(tmp_path / "w.safetensors"))
    raw = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "header_2e63.safetensors").write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    files += [tmp_path / "claims_a_terabyte.safetensors", tmp_path / "header_2e63.safetensors"]
    results = _check_in_child(files)
    for path in files:
        result = results[path.name]
        assert result["violation"] is None, result
        assert result["read"][0] == result["inspect"][0] == "error", result


def test_fuzzed_files_never_crash_the_readers(tmp_path):
    """Seeded truncations, bit flips, mutated pickles/opcodes/zip sizes/safetensors headers of tiny files."""
    rc, lines = _child("fuzz", 0, 300, tmp_path)
    violations = [r for r in lines if "violation" in r]
    assert rc == 0 and not violations, (rc, violations[:5] or lines[-1:])
    assert lines[-1] == {"cases": 300, "broken": 0}


def test_no_code_runs_from_reduce_payloads(tmp_path):
    """A pickle whose __reduce__ would call os.system is refused before anything runs."""
    import pickle
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for name, tree in (("evil.bin", {"w": Payload()}),
                       ("evil_storage.bin", {"w": T(S(kind=Payload()), 0, (1,), (1,))})):
        data = pickle.dumps(tree, protocol=2) if name == "evil.bin" else wf.craft_pickle(tree)
        wf.craft_bin(tmp_path / name, {}, {"0": wf.floats(1)}, pickle_bytes=data)
        for reader in (read_weights, inspect_weights):
            with pytest.raises(WeightFileError, match=name):
                reader(tmp_path / name)
    assert not marker.exists()


def test_inspect_reads_headers_only(tmp_path, monkeypatch):
    """Names, dtypes and shapes as read_weights gives them, without reading any tensor data."""
    (tmp_path / "odd.bin").write_bytes(GOLDEN["torch_odd_bin"].tobytes())
    save_file({"w": np.ones((2, 3), np.float32), "h": np.zeros(4, np.float16)}, str(tmp_path / "w.safetensors"))
    expected = {p: {k: (v.dtype, v.shape) for k, v in read_weights(tmp_path / p).items()}
                for p in ("odd.bin", "w.safetensors")}
    assert expected["odd.bin"]["bfloat16"] == (np.float32, (2,))
    read = zipfile.ZipFile.read

    def no_tensor_data(archive, member, *args):
        name = getattr(member, "filename", member)
        return pytest.fail(f"read {name}") if "/data/" in name else read(archive, member, *args)

    monkeypatch.setattr(zipfile.ZipFile, "read", no_tensor_data)
    for p in expected:
        assert inspect_weights(tmp_path / p) == expected[p]
    (tmp_path / "cut.bin").write_bytes(GOLDEN["torch_odd_bin"].tobytes()[:-300])
    with pytest.raises(WeightFileError, match="cut.bin"):
        inspect_weights(tmp_path / "cut.bin")
    with pytest.raises(WeightFileError, match="not found"):
        inspect_weights(tmp_path / "missing.bin")


def test_compressed_storages_are_refused(tmp_path):
    """torch.save stores tensors uncompressed; a deflated member could expand past any size check."""
    path = wf.craft_bin(tmp_path / "deflated.bin", {"t": T(S(), 0, (16,), (1,))}, {"0": wf.floats(16)},
                        compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightFileError, match="deflated.bin.*compressed"):
        read_weights(path)


def test_bfloat16_safetensors_read_as_float32(tmp_path):
    """As bf16 .bin files are: NumPy has no bfloat16."""
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    bits = (np.float32([1.5, -2.25]).view(np.uint32) >> 16).astype("<u2").tobytes()
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits)
    state = read_weights(tmp_path / "bf.safetensors")
    assert state["w"].dtype == np.float32 and np.array_equal(state["w"], [1.5, -2.25])
    assert inspect_weights(tmp_path / "bf.safetensors") == {"w": (np.float32, (2,))}


def test_big_endian_zips_are_read(tmp_path):
    """torch>=2.1 records the writer's byte order; a big-endian machine's file reads the same."""
    values = np.arange(6, dtype=np.float32)
    with zipfile.ZipFile(tmp_path / "be.bin", "w") as z:
        z.writestr("be/data.pkl", wf.craft_pickle({"w": T(S(numel=6), 0, (2, 3), (3, 1))}))
        z.writestr("be/data/0", values.astype(">f4").tobytes())
        z.writestr("be/byteorder", "big")
    state = read_weights(tmp_path / "be.bin")
    assert state["w"].dtype == np.float32 and np.array_equal(state["w"], values.reshape(2, 3))
