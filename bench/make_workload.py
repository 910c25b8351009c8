"""Generates ``bench/workload.jsonl``: a mixed chat workload for the savings benchmark (fixed seed: the same
file every time).

    python -m bench.make_workload [--requests 500] [--seed 20260301] [--out bench/workload.jsonl]

Each line is one request: ``{"id", "kind", "template", "required_tier", "body", "output_tokens"}``. ``body`` is
the OpenAI chat request a client would send (``model: "auto"``: arbstr picks model and provider);
``output_tokens`` is how long the answer turned out, so every strategy is billed for the same tokens.
``required_tier`` is the generator's own judgement of the weakest tier that does the task well, set per
template and independent of arbstr's complexity score, which the benchmark checks against it.

Proportions: 60 % short chat, 30 % code, 10 % long reasoning (architecture reviews over several files, and
analyses of long documents).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, Callable

DEFAULT_OUT = Path(__file__).with_name("workload.jsonl")
DEFAULT_SEED = 20260301
MIX = (("chat", 0.60), ("code", 0.30), ("reasoning", 0.10))

COUNTRIES = ["France", "Japan", "Kenya", "Peru", "Canada", "Norway", "Vietnam", "Chile", "Egypt", "Poland"]
LANGS = ["Spanish", "German", "French", "Italian", "Portuguese", "Japanese", "Dutch"]
PHRASES = ["good morning, see you tomorrow", "where is the train station?", "thank you for your help",
           "the meeting is moved to Friday", "I would like a table for two", "happy birthday, my friend"]
TOPICS = ["home composting", "remote work", "city cycling", "sourdough bread", "budget travel", "houseplants",
          "learning the guitar", "running a first marathon", "saving for retirement", "bird watching"]
TASKS = ["reset my router", "remove a red wine stain", "boil an egg perfectly", "start a vegetable garden",
         "write a cover letter", "back up my phone", "clean a cast iron pan", "fall asleep faster"]
DISHES = ["lentil soup", "pad thai", "banana bread", "a quick tomato sauce", "overnight oats", "guacamole"]
SMALL_TALK = ["hi", "hello!", "good morning, how are you?", "thanks, that helped a lot", "ok, got it",
              "can you say that shorter?", "what do you mean?", "nice, thank you!"]
# Plain prose for chat paragraphs and documents: no code, no paths, no reasoning vocabulary.
NOUNS = ["the team", "the market", "the city council", "our customers", "the committee", "the supplier",
         "the new office", "the quarterly budget", "the project", "the river valley", "the museum", "the school"]
VERBS = ["reported", "announced", "expected", "described", "planned", "reviewed", "published", "discussed"]
OBJECTS = ["a modest increase in demand", "delays in the spring schedule", "higher costs for materials",
           "a new partnership with local firms", "changes to the opening hours", "strong results in the north",
           "a shortage of qualified staff", "plans for a second site", "lower energy use than last year",
           "an updated safety policy", "feedback from several hundred visitors", "a smaller team in sales"]
TAILS = ["after a long consultation.", "despite the weather.", "for the third year in a row.",
         "according to the latest figures.", "as part of the annual review.", "earlier than many had hoped.",
         "while keeping prices stable.", "with support from volunteers."]
IDENTS = ["order", "user", "invoice", "item", "session", "record", "payload", "event", "account", "batch"]
ERRORS = ["KeyError", "TypeError", "IndexError", "a null pointer exception", "an off-by-one error",
          "a deadlock", "a timeout"]
DIRS = ["src/app", "src/services", "lib/core", "pkg/api", "internal/store", "app/models", "services/billing"]
SYMPTOMS = ["requests time out under load", "duplicate rows appear after retries", "memory grows until the "
            "process is killed", "p99 latency doubled after the last deploy", "some payments are settled twice"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(NOUNS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"


def prose(rng: random.Random, tokens: int) -> str:
    """Roughly ``tokens`` tokens (4 characters each) of plain paragraphs."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        para = " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out)


def ident(rng: random.Random) -> str:
    return f"{rng.choice(IDENTS)}_{rng.choice(['id', 'list', 'map', 'count', 'total', 'state'])}"


def python_code(rng: random.Random, lines: int) -> str:
    name = f"{rng.choice(['load', 'merge', 'apply', 'sync', 'parse', 'build'])}_{rng.choice(IDENTS)}s"
    a, b = ident(rng), ident(rng)
    body = [f"def {name}({a}, {b}=None):", f'    """Return the {rng.choice(IDENTS)}s of {a}."""', "    result = []"]
    pool = [
        f"    for entry in {a}:", f"        if entry.get('{rng.choice(IDENTS)}') > {rng.randint(0, 99)}:",
        "            result.append(entry)", f"    {b} = {b} or {{}}", f"    total = sum(e['amount'] for e in {a})",
        f"    if not {a}:", "        return result", f"    key = str({b}.get('key', ''))",
        f"    cache[{rng.randint(1, 9)}] = key", "    result.sort(key=lambda e: e['ts'])",
        f"    logger.debug('merged %d rows', len({a}))", "    seen = set()",
    ]
    while len(body) < lines - 1:
        body.append(rng.choice(pool))
    body.append("    return result")
    return "\n".join(body)


def path(rng: random.Random, ext: str = "py") -> str:
    return f"{rng.choice(DIRS)}/{rng.choice(IDENTS)}_{rng.choice(['handler', 'store', 'client', 'utils'])}.{ext}"


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


def turns(rng: random.Random, history: int, last: str) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    for _ in range(history):
        msgs.append({"role": "user", "content": rng.choice(SMALL_TALK + [f"Tell me about {rng.choice(TOPICS)}."])})
        msgs.append({"role": "assistant", "content": prose(rng, rng.randint(30, 120))})
    msgs.append({"role": "user", "content": last})
    return msgs


# --- templates: (name, required tier, build(rng) -> (messages, output tokens)) -----------------------------------
Built = tuple[list[dict[str, str]], int]


def chat_templates() -> list[tuple[str, str, Callable[[random.Random], Built]]]:
    def fact(rng: random.Random) -> Built:
        q = rng.choice([f"What is the capital of {rng.choice(COUNTRIES)}?", f"What currency is used in "
                        f"{rng.choice(COUNTRIES)}?", f"What language do people speak in {rng.choice(COUNTRIES)}?"])
        return turns(rng, rng.choice([0, 0, 1]), q), rng.randint(15, 80)

    def translate(rng: random.Random) -> Built:
        return turns(rng, 0, f"Translate '{rng.choice(PHRASES)}' into {rng.choice(LANGS)}."), rng.randint(10, 40)

    def howto(rng: random.Random) -> Built:
        q = rng.choice([f"How do I {rng.choice(TASKS)}?", f"What's a good recipe for {rng.choice(DISHES)}?"])
        return turns(rng, rng.choice([0, 1, 2]), q), rng.randint(150, 450)

    def idea(rng: random.Random) -> Built:
        q = f"Give me five blog post titles about {rng.choice(TOPICS)}."
        return turns(rng, rng.choice([0, 1]), q), rng.randint(60, 150)

    def summary(rng: random.Random) -> Built:
        return turns(rng, 0, "Summarize this in two sentences:\n\n" + prose(rng, rng.randint(150, 600))), \
            rng.randint(40, 90)

    def small_talk(rng: random.Random) -> Built:
        return turns(rng, rng.choice([1, 2, 3]), rng.choice(SMALL_TALK)), rng.randint(10, 120)

    return [("fact", "local", fact), ("translate", "local", translate), ("howto", "local", howto),
            ("idea", "local", idea), ("summary", "local", summary), ("small_talk", "local", small_talk)]


def code_templates() -> list[tuple[str, str, Callable[[random.Random], Built]]]:
    def snippet(rng: random.Random) -> str:
        return fenced(python_code(rng, rng.randint(12, 70)))

    def fix(rng: random.Random) -> Built:
        q = (f"Fix the bug in {path(rng)}: it raises {rng.choice(ERRORS)} when the input is empty.\n\n"
             + snippet(rng))
        return turns(rng, 0, q), rng.randint(250, 900)

    def refactor(rng: random.Random) -> Built:
        return turns(rng, 0, "Refactor this function so it is easier to read:\n\n" + snippet(rng)), \
            rng.randint(300, 1000)

    def tests(rng: random.Random) -> Built:
        return turns(rng, 0, f"Write pytest unit tests for {path(rng)}:\n\n" + snippet(rng)), rng.randint(400, 1200)

    def why(rng: random.Random) -> Built:
        return turns(rng, rng.choice([0, 1]), "Why does this return an empty list?\n\n" + snippet(rng)), \
            rng.randint(150, 500)

    def sql(rng: random.Random) -> Built:
        query = (f"SELECT u.id, count(o.id) FROM users u JOIN orders o ON o.user_id = u.id WHERE o.created_at > "
                 f"now() - interval '{rng.randint(2, 90)} days' GROUP BY u.id ORDER BY 2 DESC;")
        return turns(rng, 0, "Optimize this query, it is slow on a large table:\n\n" + fenced(query, "sql")), \
            rng.randint(200, 600)

    def explain(rng: random.Random) -> Built:
        return turns(rng, 0, "Explain what this does, briefly:\n\n" + fenced(python_code(rng, rng.randint(6, 14)))), \
            rng.randint(80, 250)

    # Explaining a short snippet is within a small local model's reach; the rest wants a standard model.
    return [("fix", "standard", fix), ("refactor", "standard", refactor), ("tests", "standard", tests),
            ("why", "standard", why), ("sql", "standard", sql), ("explain", "local", explain)]


def reasoning_templates() -> list[tuple[str, str, Callable[[random.Random], Built]]]:
    def architecture(rng: random.Random) -> Built:
        files = []
        target = rng.randint(2_000, 8_000) * 4
        while sum(map(len, files)) < target:
            files.append(f"### {path(rng)}\n" + fenced(python_code(rng, rng.randint(40, 120))))
        q = ("\n\n".join(files) + f"\n\nIn production {rng.choice(SYMPTOMS)}. Analyze this service step by step, "
             "find the root cause, and propose a design that fixes it; compare the trade-offs of the options.")
        return turns(rng, 0, q), rng.randint(900, 2500)

    def document(rng: random.Random) -> Built:
        doc = prose(rng, rng.randint(16_500, 20_000))
        q = (doc + "\n\nEvaluate the two proposals described above, compare their risks, and derive which one "
             "the board should choose. Reason step by step.")
        return turns(rng, 0, q), rng.randint(800, 2000)

    return [("architecture", "frontier", architecture), ("architecture", "frontier", architecture),
            ("architecture", "frontier", architecture), ("document", "frontier", document)]


def generate(requests: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pools = {"chat": chat_templates(), "code": code_templates(), "reasoning": reasoning_templates()}
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    out = []
    for i in range(requests):
        kind = rng.choices(kinds, weights)[0]
        name, tier, build = rng.choice(pools[kind])
        messages, output_tokens = build(rng)
        body: dict[str, Any] = {"model": "auto", "messages": messages}
        if rng.random() < 0.5:  # half the clients cap the answer, a little above what they get
            body["max_tokens"] = output_tokens + rng.randint(0, output_tokens)
        out.append({"id": f"w{i:04d}", "kind": kind, "template": name, "required_tier": tier, "body": body,
                    "output_tokens": output_tokens})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    rows = generate(args.requests, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    print(json.dumps({"out": str(args.out), "requests": len(rows), "bytes": args.out.stat().st_size}))


if __name__ == "__main__":
    main()
