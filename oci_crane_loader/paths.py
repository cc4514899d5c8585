"""Path safety: a path named by a manifest annotation or a tar entry, checked before anything is written."""

from __future__ import annotations

import posixpath

from .errors import InvalidModelError

# Deeper or longer paths than any model or image holds; past them mkdir recurses too deep or the OS refuses the name.
MAX_PATH_DEPTH = 256
MAX_NAME_BYTES = 255


def safe_relative_path(raw: str, where: str) -> str:
    """A layer's or tar entry's path, normalised; anything absolute or escaping the model directory is refused,
    and so is a name the filesystem cannot take (not UTF-8, a component over 255 bytes, over 256 levels deep)."""
    text = raw
    if not text or "\x00" in text or text.startswith("/") or "\\" in text or (len(text) > 1 and text[1] == ":"):
        raise InvalidModelError(f"{where}: unsafe path {raw!r} (absolute, empty or with backslashes)",
                                "re-push the artifact with relative file paths")
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: no file system can name it
        raise InvalidModelError(f"{where}: path {raw!r} is not valid UTF-8",
                                "re-push the artifact with UTF-8 file names") from None
    normal = posixpath.normpath(text)
    if normal in (".", "") or normal == ".." or normal.startswith("../"):
        raise InvalidModelError(f"{where}: path {raw!r} escapes the model directory",
                                "re-push the artifact with relative file paths")
    parts = [part.encode() for part in normal.split("/")]
    if len(parts) > MAX_PATH_DEPTH or max(len(part) for part in parts) > MAX_NAME_BYTES:
        shown = raw if len(raw) <= 80 else raw[:80] + "..."
        raise InvalidModelError(f"{where}: path {shown!r} is over {MAX_PATH_DEPTH} directories deep or has a "
                                f"name over {MAX_NAME_BYTES} bytes", "re-push the artifact with shorter paths")
    return normal
