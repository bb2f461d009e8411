"""File names a user types (Prune & Distill's output_name) that are safe on every platform ComfyUI runs on.

A name that Linux accepts can still be unusable or misleading elsewhere, or to the person reading it:
Windows reserves device names (CON, NUL, COM1, also with an extension: NUL.tar.gz is NUL), drops trailing
dots and spaces, and forbids <>:"/\\|?*; invisible characters (U+202E turns "gpj.exe" around, U+200B hides
in a name, U+2028 breaks a line) make two names look alike; and a name of 300 characters fails with a raw
OSError (255 bytes is the limit of most file systems, and Windows paths are short by default).
"""

from __future__ import annotations

import unicodedata

FORBIDDEN = '/\\<>:"|?*'  # Windows refuses these; / and \ are folder separators everywhere
WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{kind}{n}" for kind in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]]
)
# control, format (bidi overrides, zero-width), surrogate, private-use, unassigned; line/paragraph separators
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
MAX_CHARS = 100  # of a name without its suffix: the run folder runs/<name>/ nests under models/ too
MAX_BYTES = 200  # in UTF-8, leaving room for a suffix within the usual 255-byte limit


def name_problem(stem: str) -> str | None:
    """Why `stem` (a file name without its suffix, also used as a folder name) is unsafe on some platform,
    or None. Only the reason: the caller quotes the name (repr escapes the invisible characters)."""
    if not stem:
        return "it is empty"
    if stem.startswith("."):
        return "it starts with '.' (a hidden file)"
    forbidden = sorted({c for c in stem if c in FORBIDDEN})
    if forbidden:
        return f"the characters {''.join(forbidden)} are not allowed in file names on Windows"
    odd = sorted(
        {c for c in stem if unicodedata.category(c) in INVISIBLE_CATEGORIES or (c.isspace() and c != " ")}
    )
    if odd:
        codes = ", ".join(f"U+{ord(c):04X}" for c in odd[:5])
        return f"it holds invisible or control characters ({codes})"
    if stem.endswith((".", " ")):
        return "it ends with a dot or a space (Windows drops them: the name would change)"
    if stem.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        return f"{stem.split('.')[0].rstrip(' ')!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if len(stem) > MAX_CHARS or len(stem.encode("utf-8")) > MAX_BYTES:
        return f"it is longer than {MAX_CHARS} characters ({MAX_BYTES} bytes in UTF-8)"
    return None
