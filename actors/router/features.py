"""Features of one request for the tier scorer: named, so a decision can be explained feature by feature.

Three kinds, all computed from the route summary the gateway sends (``RouteRequest``):

- shape: prompt length bands, the last ask's length, history length and turns, tools offered, fenced and inline
  code, the density of code symbols, regex- and shell-looking text, file paths, numbers, lists and clauses
  (constraints) of the instruction;
- intent: which word groups of ``lexicon.GROUPS`` the instruction hits (``lex:prove``, ``lex:plang``, ...), in a
  dozen languages, and a few conjunctions of them with the shape (``x:hard_ask``: an instruction of a few lines
  that asks for a proof, a design, trade-offs; ``x:hard&long``: such an ask over a long context);
- words: the instruction's prose (code lines left out) lowered words (``w:``), their first five letters (``p:``, so inflected forms meet) and
  CJK character pairs (``c:``); only those the trained model knows count.

The *instruction* is the last user message when it is short, else the prose paragraph at its start or end (people
write the ask before or after what they paste): a pasted report says "plan" and "million" without asking for a
plan. Only the head and tail of the message are read at all, plus one ``str.count`` of code fences over the
whole: scoring a 2k-token prompt stays well inside the router's 0.3 ms (``python -m bench.complexity``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from schemas.router import RouteRequest

from .lexicon import GROUPS
from .paths import has_file_path

# Characters read at each end of the last message for words and shapes.
HEAD = 200
TAIL = 200
# A paragraph longer than this is pasted material, not the instruction.
INSTRUCTION_MAX = 700
# Prompt sizes (tokens) from which context is "long" for hard asks, and "large" for evaluations.
LONG_CONTEXT = 1000
LARGE_CONTEXT = 3000

_LETTERS = "a-z0-9\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u097f"
_WORD_RE = re.compile(f"[{_LETTERS}](?:[{_LETTERS}'’+#.\\-]*[{_LETTERS}+#])?")
_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af"
_CJK_RE = re.compile(f"[{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")

Groups = tuple[str, ...]
PhraseIndex = dict[str, tuple[tuple[str, str], ...]]


def _build_lexicon() -> tuple[dict[str, Groups], PhraseIndex, PhraseIndex, PhraseIndex]:
    """Words by exact token; stems by their first five letters; phrases (several words, punctuation, CJK) by
    their first token or first CJK character, so a request only checks the phrases that could start in it."""
    words: dict[str, set[str]] = {}
    stems: dict[str, set[tuple[str, str]]] = {}
    by_token: dict[str, set[tuple[str, str]]] = {}
    by_char: dict[str, set[tuple[str, str]]] = {}
    for group, terms in GROUPS.items():
        for raw in terms:
            term = raw.lower()
            if term.endswith("*"):
                stem = term[:-1]
                assert len(stem) >= 5, f"stem {raw!r} is shorter than the five letters it is looked up by"
                stems.setdefault(stem[:5], set()).add((stem, group))
            elif _WORD_RE.fullmatch(term):
                words.setdefault(term, set()).add(group)
            elif _CJK_CHAR.match(term):
                by_char.setdefault(term[0], set()).add((term, group))
            else:
                first = _WORD_RE.findall(term)
                assert first, f"lexicon entry {raw!r} has no word to index it by"
                by_token.setdefault(first[0], set()).add((term, group))

    def frozen(d: dict[str, set[tuple[str, str]]]) -> PhraseIndex:
        return {k: tuple(sorted(v)) for k, v in d.items()}
    return {w: tuple(sorted(g)) for w, g in words.items()}, frozen(stems), frozen(by_token), frozen(by_char)


LEX_WORDS, LEX_STEMS, LEX_PHRASES_BY_TOKEN, LEX_PHRASES_BY_CHAR = _build_lexicon()

_CODE_GROUPS = frozenset(("plang", "library", "code_word", "sql", "regex", "shell", "error"))
_HARD_GROUPS = frozenset(("prove", "derive", "design", "tradeoff", "rigor", "research", "stakes", "depth", "security"))
# A one-line ask is hard by its words alone only for these; a short tax or medical question is not by itself.
_HARD_SHORT_GROUPS = frozenset(("prove", "derive", "design", "tradeoff", "rigor", "research"))
_EASY_GROUPS = frozenset(("fact", "translate", "convert", "greet", "format"))
# One- and two-letter language names are only names in context ("in Go", "en C", "用Go").
_SHORT_LANGS = ("Go", "C", "R", "D")
_LANG_PREPOSITIONS = frozenset(("in", "en", "em", "na", "на", "with", "using", "con", "mit", "avec", "para", "für",
                                "idiomatic", "with"))
_SYMBOLS = (";", "{", "}", "=", "(", "<", "[", "$", "_", "|")
# Regex and file-name look-alikes, found by patterns that start with a literal (re scans for it at C speed).
_REGEXY_RE = re.compile(r"\\[dwsb]|\(\?[:=!]|\[(?:a-z|0-9|\^)|\.[*+]\??|\{\d,\d*\}|\^[(\[]")
_FILE_EXT_RE = re.compile(r"\.(?:py|pyc|js|ts|tsx|jsx|rs|go|java|rb|php|sh|sql|ya?ml|json|toml|cfg|conf|ini|env|log|"
                          r"csv|md|html|css|cpp|kt|swift|tmp|gz|tgz|zip|lock|xml)\b")
_SHELLY = (" | ", "sudo ", " --", " -r", "&&", "$ ", "xargs", "#!/", "./", " > /", "2>&1")
_DIGITS = "0123456789"
_OPS = ("+", "*", "^", "=", "/", "√", "∑", "∫", "≤", "≥", "π", "²", "³")
_COMMAS = (",", ";", "，", "、", "；")
_CLAUSE_MARKS = _COMMAS + ("?", "？", " and ", " y ", " und ", " et ", " e ", " и ", " i ", " ve ")


def _names_short_language(text: str) -> bool:
    """"in Go", "en C", "用Go": a one-letter or two-letter language name after a preposition or a CJK character
    (found with ``str.find``: a regex without a literal prefix would try every position)."""
    for name in _SHORT_LANGS:
        i = text.find(name)
        while i >= 0:
            after = text[i + len(name):i + len(name) + 1]
            if not after or not ((after.isascii() and after.isalnum()) or after in "+#'’-"):
                before = text[max(0, i - 12):i]
                if before[-1:].isspace():
                    words = before.split()
                    if words and words[-1].lower() in _LANG_PREPOSITIONS:
                        return True
                elif before and _CJK_CHAR.match(before[-1]):
                    return True
            i = text.find(name, i + 1)
    return False


def _tokens(lowered: str) -> set[str]:
    """Lowered words; a hyphenated word also counts as its parts ("юнит-тест" is a "тест")."""
    tokens = set(_WORD_RE.findall(lowered))
    if "-" in lowered:
        for tok in [t for t in tokens if "-" in t]:
            tokens.update(part for part in tok.split("-") if part)
    return tokens


def _cjk_runs(lowered: str) -> list[str]:
    return [] if lowered.isascii() else _CJK_RE.findall(lowered)


def _groups(tokens: set[str], lowered: str, cjk_runs: list[str]) -> set[str]:
    # Set intersections run in C: only tokens the lexicon knows are looked at one by one.
    groups: set[str] = set()
    for tok in tokens & LEX_WORDS.keys():
        groups.update(LEX_WORDS[tok])
    long_tokens = [t for t in tokens if len(t) >= 5]
    stem_hits = {t[:5] for t in long_tokens} & LEX_STEMS.keys()
    if stem_hits:
        for tok in long_tokens:
            if tok[:5] in stem_hits:
                for stem, group in LEX_STEMS[tok[:5]]:
                    if tok.startswith(stem):
                        groups.add(group)
    for tok in tokens & LEX_PHRASES_BY_TOKEN.keys():
        for phrase, group in LEX_PHRASES_BY_TOKEN[tok]:
            if group not in groups and phrase in lowered:
                groups.add(group)
    if cjk_runs:
        for ch in set("".join(cjk_runs)):
            for phrase, group in LEX_PHRASES_BY_CHAR.get(ch, ()):
                if group not in groups and phrase in lowered:
                    groups.add(group)
    return groups


def _band(value: int, edges: tuple[int, ...], name: str) -> str:
    for i, edge in enumerate(edges):
        if value < edge:
            return f"{name}:{i}"
    return f"{name}:{len(edges)}"


def _window(text: str) -> str:
    if len(text) <= HEAD + TAIL:
        return text
    return text[:HEAD] + "\n" + text[-TAIL:]


def _paragraph_ends(text: str) -> tuple[str, str]:
    """The first and the last paragraph of a long message: a paragraph ends at a blank line or a code fence, or
    at a line break when the message has no blank line near that end."""
    head = text[:INSTRUCTION_MAX]
    cuts = [i for i in (head.find("\n\n"), head.find("```")) if i > 0] or [i for i in (head.find("\n"),) if i > 0]
    first = head[:min(cuts)] if cuts else head
    tail = text[-INSTRUCTION_MAX:]
    cut = max(tail.rfind("\n\n"), tail.rfind("```\n") + 3 if "```\n" in tail else -1)
    if cut < 0:
        cut = tail.rfind("\n")
    last = tail[cut + 1:] if cut >= 0 else tail
    return first.strip(), last.strip()


def _looks_pasted(par: str) -> bool:
    if len(par) < 8 or par.startswith(("#", "```", "{", "[", "<", "|", "//", "/*", "--")):
        return True
    return sum(map(par.count, ";{}=<>[]|")) * 20 > len(par)


def _intent(par: str) -> tuple[set[str], set[str]]:
    """(tokens, word groups) of a paragraph, lowered."""
    lowered = par.lower()
    tokens = _tokens(lowered)
    return tokens, _groups(tokens, lowered, _cjk_runs(lowered))


def _instruction(ask: str) -> tuple[str, Optional[tuple[set[str], set[str]]]]:
    """The instruction, and its (tokens, groups) when they were computed on the way."""
    if len(ask) <= INSTRUCTION_MAX:
        return ask, None
    first, last = _paragraph_ends(ask)
    prose = [p for p in (first, last) if not _looks_pasted(p)]
    if not prose:
        return first[:200] + "\n" + last[-200:], None
    if len(prose) == 1:
        return prose[0], None
    # Whichever reads more like an ask: a question mark, then words of intent, then shortness.
    scored = []
    for par in prose:
        intent = _intent(par)
        scored.append((("?" in par or "？" in par, len(intent[1] - _CODE_GROUPS), -len(par)), par, intent))
    best = max(scored, key=lambda s: s[0])
    return best[1], best[2]


def instruction_of(ask: str) -> str:
    """What the user asked, without what they pasted: the whole message when it is short, else its first or last
    paragraph (people write the ask before or after the paste), whichever reads more like an ask."""
    return _instruction(ask)[0]


def prose_of(instruction: str) -> str:
    """The instruction without code in it: fenced blocks and code-looking lines go (their tokens are a snippet's
    identifiers, not the user's words)."""
    if "```" in instruction:
        instruction = " ".join(instruction.split("```")[::2])
    if "\n" not in instruction:
        return instruction
    keep = [line for line in instruction.split("\n")
            if not line.startswith(("    ", "\t")) and sum(map(line.count, ";{}=()<>[]")) * 12 <= len(line)]
    return "\n".join(keep)


def _weighted_len(text: str, cjk_runs: list[str]) -> int:
    """Length in Latin-equivalent characters: a CJK character carries about as much as three Latin ones."""
    return len(text) + 2 * sum(len(r) for r in cjk_runs)


def ask_of(req: RouteRequest) -> str:
    """The last thing the user asked: it decides the tier (earlier turns are context)."""
    return req.last_user_text or req.text_sample[-(HEAD + TAIL):]


@dataclass(frozen=True)
class Parts:
    """A request's named features, and the instruction's words and CJK runs its word features come from."""

    named: dict[str, float]
    tokens: set[str]
    cjk_runs: list[str]


def parts(req: RouteRequest) -> Parts:
    ask = ask_of(req)
    sample = req.text_sample or ask
    feats: dict[str, float] = {"bias": 1.0}

    # --- shape ------------------------------------------------------------------------------------------------
    feats[_band(req.input_tokens, (30, 120, 500, 2000, 8000), "len")] = 1.0
    feats[_band(len(ask), (30, 100, 300, 1000, 4000), "ask")] = 1.0
    history = max(0, len(sample) - len(ask))
    feats[_band(history, (1, 500, 3000), "hist")] = 1.0
    feats[_band(req.turns, (2, 4, 8), "turns")] = 1.0
    if req.tools:
        feats["tools"] = 1.0

    # A one-character search first: most prompts hold no backtick at all, and counting "```" is slower.
    fences_ask = ask.count("```") // 2 if "`" in ask else 0
    fences_hist = max(0, sample.count("```") // 2 - fences_ask) if "`" in sample else 0
    if fences_ask:
        feats["code:fence"] = 1.0
    if fences_hist:
        feats["code:fence_hist"] = 1.0
        if fences_hist >= 3:
            feats["code:fence_hist_many"] = 1.0
    window = _window(ask)
    if "`" in window and window.count("`") - 6 * window.count("```") >= 2:
        feats["code:inline"] = 1.0
    symbols = sum(map(window.count, _SYMBOLS))
    feats[_band(100 * symbols // max(1, len(window)), (1, 3, 6), "code:sym")] = 1.0
    indented = window.count("\n    ") + window.count("\n\t")
    if indented >= 2:
        feats["code:indent"] = 1.0
    lowered = window.lower()
    if len(_REGEXY_RE.findall(lowered)) >= 2:
        feats["regexy"] = 1.0
    if any(s in lowered for s in _SHELLY):
        feats["shelly"] = 1.0
    if _FILE_EXT_RE.search(lowered) or has_file_path(window, max_tokens=16):
        feats["code:path"] = 1.0

    instruction, known = _instruction(ask)
    prose = prose_of(instruction)
    instr_lowered = lowered if prose is ask and window is ask else prose.lower()
    instr_cjk = _cjk_runs(instr_lowered)
    instr_len = _weighted_len(prose, instr_cjk)
    feats[_band(instr_len, (25, 60, 150, 300), "instr")] = 1.0
    clauses = sum(map(instr_lowered.count, _CLAUSE_MARKS))
    feats[_band(clauses, (2, 4, 7), "clauses")] = 1.0
    digits = sum(map(instr_lowered.count, _DIGITS))
    if digits:
        feats[_band(digits, (3, 10), "digits")] = 1.0
    if sum(map(instr_lowered.count, _OPS)) >= 2:
        feats["math:ops"] = 1.0
    feats[_band(sum(map(instr_lowered.count, _COMMAS)), (1, 3, 6), "commas")] = 1.0
    if instr_lowered.count("\n- ") + instr_lowered.count("\n* ") + sum(instr_lowered.count(f"\n{i}") for i in "123")\
            >= 2:
        feats["list_items"] = 1.0
    if "?" in instr_lowered or "？" in instr_lowered:
        feats["question"] = 1.0

    # --- intent: word groups -----------------------------------------------------------------------------------
    # Intent groups come from the instruction only; code groups from the whole window when it is shaped like code
    # (pasted code is a code task's material, a pasted report's words are not the ask).
    if known is not None and prose is instruction:
        instr_tokens, groups = known[0], set(known[1])
    else:
        instr_tokens = _tokens(instr_lowered)
        groups = _groups(instr_tokens, instr_lowered, instr_cjk)
    code_shaped = bool(fences_ask or indented >= 2 or symbols * 100 >= 3 * max(1, len(window)))
    if instr_lowered is not lowered and code_shaped:
        groups |= _groups(_tokens(lowered), lowered, _cjk_runs(lowered)) & _CODE_GROUPS
    if "plang" not in groups and _names_short_language(prose if len(prose) < len(window) else window):
        groups.add("plang")
    for g in groups:
        feats["lex:" + g] = 1.0

    code_signal = bool(fences_ask or "code:inline" in feats or "regexy" in feats or "shelly" in feats
                       or groups & _CODE_GROUPS)
    hard = bool(groups & _HARD_GROUPS)
    if code_signal:
        feats["x:code"] = 1.0
        if len(ask) < 300:
            feats["x:code&short"] = 1.0
    if groups & _HARD_SHORT_GROUPS and instr_len < 400:
        feats["x:hard_ask"] = 1.0
    if "stakes" in groups and (clauses >= 4 or digits >= 10 or instr_len >= 300):
        feats["x:stakes&detail"] = 1.0
    if hard:
        if req.input_tokens >= LONG_CONTEXT:
            feats["x:hard&long"] = 1.0
        if req.turns >= 3:
            feats["x:hard&turns"] = 1.0
    if "context_ref" in groups and req.turns >= 3:
        feats["x:ctx&turns"] = 1.0
    if fences_hist and req.turns >= 4:
        feats["x:codehist&turns"] = 1.0
    if "topic_switch" in groups and req.turns >= 2:
        feats["x:switch"] = 1.0
    if req.input_tokens >= 2000 and groups & _EASY_GROUPS and not hard:
        feats["x:long&easyask"] = 1.0
    if "summarize" in groups and req.input_tokens >= 800:
        feats["x:summary&long"] = 1.0
    if "evaluate" in groups and req.input_tokens >= LARGE_CONTEXT:
        feats["x:eval&long"] = 1.0
    if req.tools and history >= 1500:
        feats["x:tools&history"] = 1.0
    # Word features come from the instruction only: the words of a pasted report or log say nothing about the
    # task, and learning them would learn the corpus's documents.
    return Parts(feats, instr_tokens, instr_cjk)


def cjk_pairs(runs: list[str]) -> list[str]:
    out: list[str] = []
    for run in runs:
        if len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i:i + 2] for i in range(len(run) - 1))
    return out


def word_names(p: Parts) -> list[str]:
    """Every word feature of a request (the trainer's view; the scorer looks tokens up directly)."""
    names = [f"w:{t}" for t in p.tokens if not t.isdigit()]
    names += [f"p:{t[:5]}" for t in p.tokens if len(t) >= 6 and not t[0].isdigit()]
    names += [f"c:{pair}" for pair in cjk_pairs(p.cjk_runs)]
    return names


def extract(req: RouteRequest) -> dict[str, float]:
    """All features of ``req``, named and words (value 1.0 unless a count says more)."""
    p = parts(req)
    feats = dict(p.named)
    for name in word_names(p):
        feats[name] = 1.0
    return feats
