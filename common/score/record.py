"""A style's score record, `OUTPUT/STYLE/score.json`: its parts for the StyleID results and for the content
images (DreamBooth alone), with the size and mtime of every image it scored, so a result that changed
since is scored again (docs/score.md, "The stage"). Jittor-free: the launcher reads it."""
import json
from pathlib import Path
from typing import Dict, Sequence

from common.jobqueue.atomic import write_bytes
from common.naming import name_problem
from common.score.formula import StyleParts

KINDS = ("result", "content")  # what the stage scores of each style, in table order


def _identity(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def write_record(path: Path, parts: Dict[str, StyleParts], images: Sequence[Path], fsync: bool = True):
    """Write the record atomically; `images` are the files scored, inside the record's folder."""
    folder = Path(path).parent
    record = {"parts": {kind: p.to_json() for kind, p in parts.items()},
              "images": {Path(p).relative_to(folder).as_posix(): _identity(Path(p)) for p in images}}
    write_bytes(Path(path), json.dumps(record).encode(), fsync=fsync)


def read_record(path: Path) -> Dict[str, StyleParts]:
    """{kind: StyleParts}; ValueError naming the file if it is not a record we wrote."""
    try:
        data = json.loads(Path(path).read_bytes())
        return {kind: StyleParts.from_json(data["parts"][kind]) for kind in KINDS if kind in data["parts"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a score record ({type(e).__name__}: {e}); delete it and rerun to "
                         "score the style again") from None


def record_is_current(path: Path) -> bool:
    """The record is whole and every image it scored is still the one it scored (a stage's done-check)."""
    folder = Path(path).parent
    try:
        images = json.loads(Path(path).read_bytes())["images"]
        for name, identity in images.items():
            if any(name_problem(part) for part in name.split("/")) or _identity(folder / name) != identity:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True
