"""JSON Schema files of the events other tools consume, generated from the pydantic models.

    python -m schemas.export        # rewrites schemas/jsonschema/*.json

A test checks the committed files are what this module generates, so they never drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from .breaker import BreakerState, Outcome
from .ledger import JournalEntry
from .pricing import ProviderPrices
from .requests import RequestRecord
from .vault import SpendEvent

OUT = Path(__file__).with_name("jsonschema")
EXPORTED: dict[str, type[BaseModel]] = {
    "spend_event": SpendEvent,
    "breaker_outcome": Outcome,
    "breaker_state": BreakerState,
    "journal_entry": JournalEntry,
    "request_record": RequestRecord,
    "price_entry": ProviderPrices,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, model in EXPORTED.items():
        (OUT / f"{name}.json").write_text(render(model))


if __name__ == "__main__":
    main()
