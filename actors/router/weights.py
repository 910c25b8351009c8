"""The tier model the router uses: the shipped ``data/tier_model.json`` (trained offline by
``python -m bench.train_tiers``; no network, no download), or an operator's own file (``[complexity]
model_file``). Each file is read once per process."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

from .scorer import TierModel

MODEL_FILE = "tier_model.json"


@lru_cache(maxsize=1)
def default_model() -> TierModel:
    text = resources.files("actors.router").joinpath("data", MODEL_FILE).read_text(encoding="utf-8")
    return TierModel.from_json(json.loads(text))


@lru_cache(maxsize=4)
def _model_file(path: str) -> TierModel:
    return TierModel.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def model_for(path: Optional[str]) -> TierModel:
    return _model_file(path) if path else default_model()
