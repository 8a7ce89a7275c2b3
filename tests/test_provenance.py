"""Records of what made a result (docs/queue.md §11): in a PNG's text chunk, in a LoRA's provenance.json,
and the identities of input files they name."""
import os

import numpy as np
from PIL import Image

from common import provenance as prov
from common.identity import Identities

PIXELS = np.full((4, 4, 3), 7, np.uint8)


def test_a_png_carries_its_record_where_any_viewer_shows_it(tmp_path):
    made_by = prov.record("plan1", "task1", {"lora": "sha256:aa", "model": "sha256:bb"})
    path = prov.write_png(tmp_path / "a.png", PIXELS, made_by, fsync=False)
    assert Image.open(path).text[prov.KEYWORD].encode() == made_by
    assert np.array_equal(np.asarray(Image.open(path)), PIXELS)
    assert prov.png_state(path, made_by) == prov.OK
    assert prov.png_state(path, prov.record("plan2", "task1", {})) == prov.STALE
    assert prov.png_state(tmp_path / "none.png", made_by) == prov.MISSING
    Image.fromarray(PIXELS).save(tmp_path / "theirs.png")
    assert prov.png_state(tmp_path / "theirs.png", made_by) == prov.FOREIGN
    path.write_bytes(path.read_bytes()[:-5])
    assert prov.png_state(path, made_by) == prov.PARTIAL


def test_a_result_made_otherwise_is_replaced_by_one_rename_and_a_matching_one_is_kept(tmp_path):
    old, new = prov.record("p", "t", {"lora": "sha256:1"}), prov.record("p", "t", {"lora": "sha256:2"})
    path = prov.write_png(tmp_path / "a.png", PIXELS, old, fsync=False)
    inode = os.stat(path).st_ino
    prov.write_png(path, PIXELS + 1, old, fsync=False)  # same record: the first whole file wins
    assert os.stat(path).st_ino == inode and np.asarray(Image.open(path))[0, 0, 0] == 7
    prov.write_png(path, PIXELS + 1, new, fsync=False)
    assert prov.png_made_by(path) == new and np.asarray(Image.open(path))[0, 0, 0] == 8
    assert sorted(os.listdir(tmp_path)) == ["a.png"]  # no temp file left


def test_why_names_what_differs():
    base = prov.record("p", "t", {"lora": "sha256:1", "model": "sha256:m"})
    assert prov.why(prov.record("q", "t", {"lora": "sha256:1", "model": "sha256:m"}), base) == "settings"
    assert prov.why(prov.record("p", "t", {"lora": "sha256:0", "model": "sha256:m"}), base) == "lora changed"
    assert prov.why(prov.record("p", "u", {"lora": "sha256:1", "model": "sha256:m"}), base) == "task"
    assert prov.why(None, base) == "no provenance"


def test_identities_follow_content_not_names_and_notice_a_rewrite(tmp_path):
    ids = Identities(tmp_path / "ids.json")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    assert ids.of(a) == ids.of(b) and ids.of(tmp_path / "missing") is None
    first = ids.of(a)
    st = os.stat(a)
    a.write_bytes(b"two")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the ctime still moved
    assert ids.of(a) != first
    ids.save()
    assert Identities(tmp_path / "ids.json").known == ids.known


def test_frozen_identities_stat_each_file_once(tmp_path):
    ids = Identities()
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with ids.frozen():
        before = ids.of(f)
        f.write_bytes(b"changed")
        assert ids.of(f) == before
    assert ids.of(f) != before


def test_a_folder_identity_changes_with_any_of_its_files(tmp_path):
    ids = Identities()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(b"a")
    (tmp_path / "images" / "2.png").write_bytes(b"b")
    before = ids.of(tmp_path / "images")
    (tmp_path / "images" / "2.png").write_bytes(b"c")
    assert ids.of(tmp_path / "images") != before


def test_a_model_identity_is_its_folders_files_or_its_single_files_content(tmp_path):
    ids = Identities()
    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet")
    single = tmp_path / "v2-1_768-ema-pruned.safetensors"
    single.write_bytes(b"whole model")
    before = ids.model(folder), ids.model(single)
    assert None not in before and before[0] != before[1] and ids.model(tmp_path / "none.ckpt") is None
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"other unet")
    single.write_bytes(b"another model")
    assert ids.model(folder) != before[0] and ids.model(single) != before[1]


def test_a_retrained_lora_keeps_its_previous_version_and_switching_back_restores_it(tmp_path):
    ids = Identities()
    lora = tmp_path / "style_00" / "pytorch_lora_weights.bin"
    rank4, rank8 = prov.record("train4", "00", {}), prov.record("train8", "00", {})
    prov.place_lora(lora, b"rank 4 weights", rank4, None, fsync=False)
    assert prov.lora_made_by(lora, ids.of(lora)) == rank4
    lora.with_name("other.bin").write_bytes(b"a user's LoRA")
    assert prov.lora_made_by(lora.with_name("other.bin"), ids.of(lora.with_name("other.bin"))) is None

    prov.place_lora(lora, b"rank 8 weights", rank8, rank4, fsync=False)
    assert lora.read_bytes() == b"rank 8 weights" and prov.lora_made_by(lora, ids.of(lora)) == rank8
    assert prov.kept_path(lora, rank4).read_bytes() == b"rank 4 weights"

    assert prov.restore_kept(lora, rank4, ids.of, fsync=False)
    assert lora.read_bytes() == b"rank 4 weights" and prov.lora_made_by(lora, ids.of(lora)) == rank4
    assert prov.kept_path(lora, rank8).read_bytes() == b"rank 8 weights"
    assert not prov.restore_kept(lora, prov.record("train16", "00", {}), ids.of, fsync=False)
