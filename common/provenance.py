"""What made a result, recorded with it, so planning counts only results this run would make (docs/queue.md §11).

A record names the hash of the settings that change the result (`plan`), the job it answers (`task`:
style, prompt and seed) and the identity of every input file it read (`inputs`: model, LoRA, style image,
a style's training images; common/identity.py). Records are canonical JSON, so two are equal exactly when
their bytes are: planning compares bytes and parses only to say what differs.

Where a record lives: images carry it in a PNG text chunk (keyword `jstyleid`, before the pixel data, so
reading it costs one small read; any viewer shows it). A LoRA trained here is named, by its content
identity, in `provenance.json` beside it (a torch `.bin` has no room for text), written before the LoRA
itself: the LoRA's rename is the one commit point, and a record whose LoRA never landed names content that
is not there. A retrained LoRA's previous version stays beside it as `<stem>.<digest of its record><suffix>`,
so switching back to an earlier recipe costs a link, not a training run.
"""
import hashlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from common.atomic import write_bytes
from common.jobqueue import crash

KEYWORD = "jstyleid"  # the PNG text chunk's keyword
SIDECAR = "provenance.json"  # beside a LoRA trained here: {content identity: record}
_KEPT_RECORDS = 16  # sidecar entries kept (older LoRAs kept beside the current one)
_HEAD = 4096  # bytes read from a PNG's start: signature, IHDR and our text chunk

# What a PNG output holds: the states `png_state` tells apart.
OK, MISSING, PARTIAL, FOREIGN, STALE = "ok", "missing", "partial", "foreign", "stale"


def record(plan: str, task: Optional[str], inputs: Mapping[str, Optional[str]]) -> bytes:
    """The canonical bytes of a record (ASCII JSON, sorted keys)."""
    return json.dumps({"plan": plan, "task": task, "inputs": dict(inputs)}, sort_keys=True,
                      separators=(",", ":")).encode()


def parse(data: Optional[bytes]) -> Optional[dict]:
    try:
        found = json.loads(data)
    except (TypeError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("inputs"), dict) else None


def why(found: Optional[bytes], wanted: bytes) -> str:
    """What differs between a result's record and the one this run would write, in a few words:
    `settings`, `task` (another prompt or seed behind the file name), `<input> changed`, or `no provenance`."""
    old, new = parse(found), parse(wanted)
    if old is None:
        return "no provenance"
    if old.get("plan") != new["plan"]:
        return "settings"
    changed = sorted(k for k in set(old["inputs"]) | set(new["inputs"]) if old["inputs"].get(k) != new["inputs"].get(k))
    if changed:
        return " and ".join(changed) + " changed"
    return "task" if old.get("task") != new.get("task") else "settings"


def digest(made_by: bytes) -> str:
    return hashlib.sha256(made_by).hexdigest()[:12]


# -- PNG ------------------------------------------------------------------------------------------------
def png_bytes(image, made_by: Optional[bytes]) -> bytes:
    """PNG bytes of a PIL image or uint8 (H,W,3) array, with `made_by` in a `jstyleid` text chunk."""
    import numpy as np
    from PIL import Image, PngImagePlugin
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    info = None
    if made_by is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(KEYWORD, made_by.decode("ascii"))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_record(head: bytes) -> Optional[bytes]:
    """The `jstyleid` text of a PNG's first bytes (signature, then chunks up to the pixel data), or None."""
    pos, key = 8, KEYWORD.encode() + b"\0"
    while pos + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[pos:pos + 8])
        if kind == b"IDAT":
            return None
        data = head[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.startswith(key) and len(data) == length:
            return data[len(key):]
        pos += 12 + length
    return None


def png_state(path, wanted: Optional[bytes]) -> str:
    """OK (whole, made by `wanted`), MISSING, PARTIAL (not whole), FOREIGN (whole, no record of ours) or
    STALE (whole, made by something else). One open, two small reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            if head[:8] != b"\x89PNG\r\n\x1a\n":
                return PARTIAL
            f.seek(-12, os.SEEK_END)
            if f.read(12)[4:8] != b"IEND":
                return PARTIAL
    except FileNotFoundError:
        return MISSING
    except OSError:
        return PARTIAL
    found = png_record(head)
    if found is None:
        return FOREIGN
    return OK if found == wanted else STALE


def png_made_by(path) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return png_record(f.read(_HEAD))
    except OSError:
        return None


def write_png(path, image, made_by: bytes, *, fsync: bool) -> Path:
    """Atomically place a result PNG carrying `made_by`. A whole file with the same record already there
    is kept (the first whole file wins, docs/queue.md §4); one made by anything else, or not whole, is
    replaced by one rename: the old result stays until its replacement is in place."""
    def counts(p) -> bool:
        if png_state(p, made_by) == OK:
            return True
        crash.point("replace_result")  # the old result in place, its replacement whole beside it
        return False
    return write_bytes(path, png_bytes(image, made_by), fsync=fsync, once=counts)


# -- LoRAs trained here ---------------------------------------------------------------------------------
def _sidecar(lora: Path) -> Path:
    return Path(lora).with_name(SIDECAR)


def _read_sidecar(lora: Path) -> Dict[str, str]:
    try:
        data = json.loads(_sidecar(lora).read_bytes())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def lora_made_by(lora, identity: Optional[str]) -> Optional[bytes]:
    """The record of the LoRA at `lora` whose content identity is `identity` (common/identity.py), if we
    trained it (a .safetensors holds it in its metadata); None for a LoRA the user supplied (or one an
    older jstyleid trained)."""
    if identity is None:
        return None
    if Path(lora).suffix == ".safetensors":
        return _safetensors_record(lora)
    found = _read_sidecar(Path(lora)).get(identity)
    return found.encode() if found is not None else None


def _safetensors_record(path) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(size, 1 << 24)))
        found = header.get("__metadata__", {}).get(KEYWORD)
    except (OSError, ValueError, struct.error, AttributeError):
        return None
    return found.encode() if isinstance(found, str) else None


def prepare_lora(lora, made_by: bytes, identity_of, *, fsync: bool) -> Tuple[str, Optional[bytes]]:
    """What a training job does with the LoRA at `lora`: ("keep", None) when it is the user's (no record of
    ours: never overwritten) or already made by `made_by`; ("restored", None) when one kept for `made_by`
    was put back; else ("train", the record of ours it will replace, or None)."""
    lora = Path(lora)
    current = lora_made_by(lora, identity_of(lora)) if lora.is_file() else None
    if lora.is_file() and (current is None or current == made_by):
        return "keep", None
    if restore_kept(lora, made_by, identity_of, fsync=fsync):
        return "restored", None
    return "train", current


def kept_path(lora, made_by: bytes) -> Path:
    """Where a LoRA made by `made_by` is kept once a retrained one replaces it."""
    lora = Path(lora)
    return lora.with_name(f"{lora.stem}.{digest(made_by)}{lora.suffix}")


def place_lora(lora, data: bytes, made_by: bytes, old: Optional[bytes], *, fsync: bool) -> Path:
    """Publish a LoRA trained here: its record first (under the content identity of `data`),
    then, if `old` (the record of the LoRA there now) differs, that LoRA kept beside as `kept_path`, then
    the LoRA itself by one rename. A crash at any point leaves the old LoRA with its record, or the new one
    with its record."""
    from common.identity import data_identity
    lora, identity = Path(lora), data_identity(data)
    entries = _read_sidecar(lora)
    entries.pop(identity, None)
    entries[identity] = made_by.decode("ascii")
    entries = dict(list(entries.items())[-_KEPT_RECORDS:])
    write_bytes(_sidecar(lora), json.dumps(entries, indent=1).encode(), fsync=fsync)
    if old is not None and old != made_by and lora.is_file():
        keep = kept_path(lora, old)
        try:
            os.link(lora, keep)
        except FileExistsError:
            pass
    return write_bytes(lora, data, fsync=fsync)


def restore_kept(lora, made_by: bytes, identity_of, *, fsync: bool) -> bool:
    """Put back the LoRA kept beside `lora` for `made_by` (an earlier recipe), keeping the current one in
    turn; False when there is none whose content still matches its record."""
    lora = Path(lora)
    kept = kept_path(lora, made_by)
    if not kept.is_file() or lora_made_by(lora, identity_of(kept)) != made_by:
        return False
    current = lora_made_by(lora, identity_of(lora)) if lora.is_file() else None
    if current is not None and current != made_by:
        try:
            os.link(lora, kept_path(lora, current))
        except FileExistsError:
            pass
    return bool(write_bytes(lora, kept.read_bytes(), fsync=fsync))
