"""Builds ``bench/corpus/corpus.jsonl`` from the family modules (fixed seed: the same file every time).

    python -m bench.corpus.build [--out bench/corpus/corpus.jsonl]

Each line: ``{"id", "family", "tier", "lang", "split", "body", "output_tokens"}``. ``body`` is the OpenAI chat
request a client would send (``model: "auto"``); ``tier`` is the weakest tier that does the task well, by the
product's definition (README, "Tiers"); ``split`` is ``train`` or ``heldout``, decided per *family*: a held-out
family is never seen by the trainer, so its figures measure generalisation, not memorised phrasing.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from . import frontier, local, sessions, standard  # noqa: F401  (importing registers the families)
from .items import FAMILIES

OUT = Path(__file__).with_name("corpus.jsonl")
SEED = 20260314

# Whole families kept away from training, across the three tiers: conversions, a long paste with an easy ask and
# short creative writing (local); regular expressions, debugging from a symptom, math word problems, config files
# and spreadsheet formulas (standard); proofs, security audits of large code and long code-and-reasoning sessions
# (frontier).
HELD_OUT = frozenset({
    "conversions", "long_doc_easy", "short_creative",
    "regex", "debug_symptom", "math_word", "config_devops", "spreadsheet_formulas",
    "proofs", "security_audit_large", "session_code_reasoning",
})


def build() -> list[dict[str, Any]]:
    rows = []
    seen: set[str] = set()
    for fam in FAMILIES:
        rng = random.Random(f"{SEED}:{fam.name}")
        i = 0
        for item in fam.make(rng):
            assert item.family == fam.name and item.tier == fam.tier, (fam.name, item.family, item.tier)
            key = json.dumps(item.body(), sort_keys=True)
            if key in seen:
                continue  # an identical request twice would only weigh one phrasing more
            seen.add(key)
            rows.append({"id": f"{fam.name}-{i:03d}", "family": fam.name, "tier": fam.tier, "lang": item.lang,
                         "split": "heldout" if fam.name in HELD_OUT else "train", "body": item.body(),
                         "output_tokens": item.output_tokens})
            i += 1
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    langs = Counter(r["lang"] for r in rows)
    return {"requests": len(rows), "families": len({r["family"] for r in rows}),
            "by_tier": dict(Counter(r["tier"] for r in rows)), "by_split": dict(Counter(r["split"] for r in rows)),
            "non_english_pct": round(100 * (len(rows) - langs["en"]) / len(rows), 1),
            "by_lang": dict(langs.most_common())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = build()
    with args.out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(json.dumps(summary(rows), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
