"""Fast whole-word-ish search in request text (up to 32 KiB per request, on the hot path).

``str.find`` runs in C; a regex with look-arounds tried at every position of 32 KiB costs about a
millisecond per pattern, which the router's latency budget cannot pay.
"""

from __future__ import annotations


def _is_word_char(ch: str) -> bool:
    return ch.isalnum()


def contains_term(text_lower: str, term_lower: str) -> bool:
    """Whether ``term_lower`` occurs in ``text_lower`` not glued to a letter or digit on either side, so "code"
    is found in "(code)" but not in "decode" or "codes"; terms with punctuation ("c++") work as well."""
    if not term_lower:
        return False
    n = len(term_lower)
    glued_left = _is_word_char(term_lower[0])
    glued_right = _is_word_char(term_lower[-1])
    start = text_lower.find(term_lower)
    while start >= 0:
        end = start + n
        if not (glued_left and start > 0 and _is_word_char(text_lower[start - 1])) and \
                not (glued_right and end < len(text_lower) and _is_word_char(text_lower[end])):
            return True
        start = text_lower.find(term_lower, start + 1)
    return False
