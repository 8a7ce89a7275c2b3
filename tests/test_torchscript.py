"""common/sd/torchscript.py reads torch.jit.save archives as torch's state_dict() does (tests/golden/
make_torchscript.py), and refuses crafted archives with one line naming the file."""
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.sd.torchscript import inspect_torchscript, read_torchscript
from common.sd.weights import WeightFileError

GOLDEN = Path(__file__).parent / "golden"
REF = np.load(GOLDEN / "torchscript.npz")


@pytest.mark.parametrize("kind", ["traced", "scripted"])
def test_state_dict_equals_torch(kind):
    ours = read_torchscript(GOLDEN / f"torchscript_{kind}.pt")
    keys = REF[f"{kind}/keys"].tolist()
    assert sorted(ours) == sorted(keys) and "blocks.0.attn_mask" not in ours
    for k in keys:
        ref = REF[f"{kind}/{k}"]
        assert ours[k].dtype == ref.dtype and np.array_equal(ours[k], ref), k
    assert inspect_torchscript(GOLDEN / f"torchscript_{kind}.pt") == {k: (v.dtype, v.shape) for k, v in ours.items()}


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the zip `src` to `dst`, passing each member's (name, bytes) through `edit` (None drops it)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as b:
        for name in a.namelist():
            kept = edit(name, a.read(name))
            if kept is not None:
                b.writestr(name, kept)
    return dst


@pytest.mark.parametrize("edit, why", [
    (lambda n, d: d.replace(b"torch._utils\n_rebuild_tensor_v2", b"os\nsystem_______________")
     if n.endswith("data.pkl") else d, "os.system"),
    (lambda n, d: None if n.endswith("batchnorm.py") else d, "has no source"),
    (lambda n, d: d[:-4] if n.endswith("data/2") else d, "bytes"),
    (lambda n, d: None if n.endswith("data/0") else d, "not in the zip"),
])
def test_crafted_archive_is_one_line_error(tmp_path, edit, why):
    path = _rewrite(GOLDEN / "torchscript_traced.pt", tmp_path / "RN50.pt", edit)
    with pytest.raises(WeightFileError) as e:
        read_torchscript(path)
    assert "RN50.pt" in str(e.value) and why in str(e.value) and "\n" not in str(e.value)


def test_not_a_zip_and_missing(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a zip")
    for path in (tmp_path / "x.pt", tmp_path / "missing.pt"):
        with pytest.raises(WeightFileError, match=path.name):
            read_torchscript(path)
