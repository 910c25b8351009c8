"""The tier scorer's features (actors/router/features.py): the instruction is found before or after a paste, code
and pasted text never become the ask's words, intent words are found across languages and inflections, and the
last ask decides a multi-turn chat. Pure: no NATS."""

from __future__ import annotations

from typing import Any

import pytest

from actors.router.complexity import decide
from actors.router.features import extract, instruction_of, parts, prose_of
from gateway.endpoints import CHAT
from schemas.config import ComplexityConfig
from schemas.router import RouteRequest

DOC = "The committee reviewed the garden budget and the new compost bins in detail. " * 40
CODE = "def f(items):\n    total = 0\n    for i in items:\n        total += i\n    return total"


def req(messages: list[dict[str, Any]], tools: bool = False) -> RouteRequest:
    body: dict[str, Any] = {"model": "auto", "messages": messages}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    s = CHAT.summarize(body)
    return RouteRequest(request_id="t", model="auto", last_user_text=s.last_user_text, text_sample=s.text_sample,
                        input_tokens=s.input_tokens, turns=s.turns, tools=s.tools)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("text,ask", [
    (f"What date is the next meeting?\n\n{DOC}", "What date is the next meeting?"),
    (f"{DOC}\n\nWhat date is the next meeting?", "What date is the next meeting?"),
    (f"{DOC}\nSummarize the risks.", "Summarize the risks."),  # a single line break is enough
    (f"fix this\n\n```python\n{CODE * 20}\n```", "fix this"),
    (f"```python\n{CODE * 20}\n```\n\nwhy is this slow?", "why is this slow?"),
    ("short ask", "short ask"),
])
def test_the_instruction_is_found_before_or_after_the_paste(text: str, ask: str) -> None:
    assert instruction_of(text) == ask


def test_a_question_beats_a_pasted_paragraph_at_the_other_end() -> None:
    contract = "Clause 1. The supplier shall deliver on time.\nClause 2. Liability is capped."
    assert instruction_of(f"What can we claim under these clauses, given the delay?\n\n{DOC}\n\n{contract}") \
        == "What can we claim under these clauses, given the delay?"


def test_code_is_not_the_users_words() -> None:
    assert prose_of(f"make this shorter\n```python\n{CODE}\n```").strip() == "make this shorter"
    assert prose_of(f"make this shorter:\n{CODE}").strip() == "make this shorter:"
    words = {n for n in extract(req(user(f"make this shorter\n\n```python\n{CODE}\n```"))) if n.startswith("w:")}
    assert words == {"w:make", "w:this", "w:shorter"}


def test_a_pasted_documents_words_are_not_features() -> None:
    f = extract(req(user(f"{DOC}\n\nWhat date is the next meeting?")))
    assert "w:committee" not in f and "w:date" in f and "w:meeting" in f
    assert "len:3" in f or "len:4" in f  # but its length counts


@pytest.mark.parametrize("text,group", [
    ("prove that sqrt 2 is irrational", "prove"), ("Докажите, что простых чисел бесконечно много", "prove"),
    ("Beweise den Satz", "prove"), ("demuestra que la serie diverge", "prove"), ("证明根号2是无理数", "prove"),
    ("√2が無理数であることを証明して", "prove"), ("implementiere eine Warteschlange", "make"),
    ("спроектируй распределённую систему", "design"), ("спроектируй распределённую систему", "scale"),
    ("what does this regex mean", "regex"), ("что значит эта регулярка", "regex"), ("这个正则是什么意思", "regex"),
    ("implement binary search in Go", "plang"), ("用Go实现二分查找", "plang"), ("escríbelo en C, por favor", "plang"),
    ("translate 'good night' into Korean", "translate"), ("Übersetze ins Englische", "translate"),
    ("теперь напиши юнит-тест", "test"),  # a hyphenated word counts as its parts
])
def test_intent_words_are_found_across_languages_and_inflections(text: str, group: str) -> None:
    assert f"lex:{group}" in parts(req(user(text))).named


@pytest.mark.parametrize("text", ["Go to the store and buy milk", "I live in Denver", "Let's go!",
                                  "Cómo se dice 'C'est la vie'?"])
def test_one_letter_language_names_need_their_context(text: str) -> None:
    assert "lex:plang" not in parts(req(user(text))).named


CODE_SESSION = [{"role": "user", "content": "why does this hang?\n```python\nwhile True:\n    pass\n```"},
                {"role": "assistant", "content": "It never leaves the loop; add a condition."}] * 3
SMALL_TALK = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]


@pytest.mark.parametrize("messages,tier", [
    (CODE_SESSION + user("thanks! what's the capital of Peru?"), "local"),
    (SMALL_TALK + user("write a python function that merges two sorted lists"), "standard"),
    (SMALL_TALK + user("prove that there are infinitely many primes"), "frontier"),
    (SMALL_TALK + user("Entwirf ein verteiltes Buchungssystem ohne Überbuchung und diskutiere die Zielkonflikte"),
     "frontier"),
])
def test_the_last_ask_decides_a_chat(messages: list[dict[str, Any]], tier: str) -> None:
    assert decide(req(messages), ComplexityConfig()).tier == tier


def test_a_long_paste_with_an_easy_ask_is_never_sent_to_frontier() -> None:
    """Length alone is not a reason for an expensive model (the keyword scorer's mistake, the other way round)."""
    d = decide(req(user(f"{DOC}\n\nWhat date is the next meeting?")), ComplexityConfig())
    assert d.tier != "frontier" and d.explanation.probabilities["frontier"] < 0.05


def test_tools_are_a_feature_and_features_are_deterministic() -> None:
    a = parts(req(user("book me a flight to Rome"), tools=True))
    b = parts(req(user("book me a flight to Rome"), tools=True))
    assert "tools" in a.named and a == b
