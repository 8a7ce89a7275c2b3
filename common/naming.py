"""Prompts become file names: safe on every filesystem, unique within a style, stable across runs; and the
one check of a name we write under (`name_problem`: job fields, style folders, lora.names), and one of
any text quoted in a one-line message (`one_line`).

The rule (the output of prompt P of style S is OUTPUT/S/<name>.png):
1. keep letters, digits, space and - _ . , ' ( ) ; every other character becomes `_`;
2. collapse runs of spaces to one space and runs of `_` to one `_`;
3. strip spaces, dots and `_` from both ends (a leading dot would hide the file; ours temp files start
   with one);
4. cap the name at 150 UTF-8 bytes (cut at a character boundary), then strip again;
5. an empty name, or a reserved one (`content`, which holds the content images, `contact_sheet`, the
   demo's overview, and the Windows device names CON, PRN, AUX, NUL, COM1-9, LPT1-9) is an error naming prompt.json;
6. when two prompts of one style give the same name (compared case-insensitively, for macOS and
   Windows), the first in prompt.json order keeps it and each later one gets `~<4 hex of sha1(prompt)>`
   appended, so appending a prompt never renames an existing output (inserting a colliding prompt before
   an existing one would: add new prompts at the end of prompt.json).
"""
import hashlib
import re

MAX_BYTES = 150
_KEEP_PUNCT = set(" -_.,'()")
RESERVED = {"content", "contact_sheet", "con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}


PLAIN_MAX_BYTES = 200


def name_problem(name, max_bytes: int = PLAIN_MAX_BYTES):
    """Why `name` is not a plain file name we may write under, or None: one path component (no separator,
    no NUL), not hidden (nor `.`/`..`), printable (it lands in one-line messages), at most `max_bytes`."""
    if not isinstance(name, str) or not name:
        return "is empty or not text"
    if any(c in name for c in "/\\\0"):
        return "holds a path separator or NUL"
    if name.startswith("."):
        return "starts with a dot (hidden, or . and ..)"
    if not name.isprintable():
        return "is not printable (tabs, newlines or control characters)"
    size = len(name.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return f"is too long ({size} bytes, at most {max_bytes})"
    return None


def one_line(error, limit: int = 200) -> str:
    """An error's text for a one-line message: whitespace runs made one space, unprintables `?`, capped."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(str(error).split()))[:limit]


class NamingError(ValueError):
    """A prompt that cannot become a file name; the message names prompt.json."""


def safe_name(prompt: str) -> str:
    """Steps 1-4 of the rule: the sanitised name of one prompt (may be empty or reserved)."""
    kept = "".join(c if (c.isalnum() or c in _KEEP_PUNCT) else "_" for c in prompt)
    kept = re.sub(r"_+", "_", re.sub(r" +", " ", kept)).strip(" ._")
    raw = kept.encode("utf-8")[:MAX_BYTES]
    return raw.decode("utf-8", errors="ignore").strip(" ._")


def prompt_names(prompts: dict, source: str) -> dict:
    """{key: name} for one style's prompt.json (`prompts` in file order); raises NamingError."""
    names, seen, texts = {}, set(), {}
    for key, prompt in prompts.items():
        if prompt in texts:
            raise NamingError(f"{source}: prompts {texts[prompt]!r} and {key!r} are the same text "
                              f"({prompt!r}); remove one")
        texts[prompt] = key
        name = safe_name(prompt)
        if not name or name.lower() in RESERVED:
            raise NamingError(f"{source}: prompt {key!r} = {prompt!r} gives the file name {name!r}, which is "
                              f"empty or reserved; reword the prompt")
        if name.lower() in seen:
            digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()
            name = f"{name}~{digest[:4]}"
            if name.lower() in seen:  # two 4-hex digests agree (1 in 65536): take 8
                name = f"{name[:-4]}{digest[:8]}"
        seen.add(name.lower())
        names[key] = name
    return names
