"""Whether a text mentions something that looks like a file path (``src/app/main.py``, ``C:\\repo\\x``): a hint
that a request is about code. Bounded work: only the tokens around separators are looked at."""

from __future__ import annotations

import re

# A token is a path when it has a separator and a file extension (src/app/main.py) or two separators
# (/usr/bin/env); "and/or" and URLs are not paths.
_PATH_EDGE_PUNCT = "\"'`()[]{}<>,;:!?"
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,8}$")


def looks_like_path(token: str) -> bool:
    token = token.strip(_PATH_EDGE_PUNCT).rstrip(".")
    if "://" in token:
        return False
    separators = token.count("/") + token.count("\\")
    if separators == 0 or len(token) < 3:
        return False
    last = max(token.rfind("/"), token.rfind("\\"))
    return separators >= 2 or bool(_EXT_RE.search(token[last + 1:]))


def _token_around(text: str, i: int) -> tuple[str, int]:
    """The whitespace-delimited token holding ``text[i]``, and the index just past it."""
    start = i
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    end = i + 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end], end


def has_file_path(text: str, max_tokens: int = 64) -> bool:
    """Looks at the tokens around separators only (at most ``max_tokens`` of them, to bound the cost)."""
    i = 0
    for _ in range(max_tokens):
        slash, backslash = text.find("/", i), text.find("\\", i)
        hits = [h for h in (slash, backslash) if h >= 0]
        if not hits:
            return False
        token, i = _token_around(text, min(hits))
        if looks_like_path(token):
            return True
    return False


