"""A partition's state as bytes and back: what the owner stores so a takeover is snapshot + tail, not a replay of
the whole journal. Pure; the format is versioned, and a snapshot of another version is simply not used."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import orjson

from schemas.vault import AgentPolicy

from .fold import AccountState, Hold, Invoice, Payout, PayoutEnd, Resolution
from .partition import PartitionState

FORMAT = 1


def _default(value: Any) -> Any:
    if isinstance(value, AgentPolicy):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot snapshot {type(value).__name__}")


def encode(part: PartitionState) -> bytes:
    doc = {
        "format": FORMAT, "partition": part.partition, "last_seq": part.last_seq, "last_hash": part.last_hash,
        "epoch": part.epoch, "corrupt": sorted(part.corrupt),
        "agents": [asdict(s) | {"policy": s.policy} for s in part.agents.values()],
    }
    return orjson.dumps(doc, default=_default)


def decode(raw: bytes) -> PartitionState:
    doc = orjson.loads(raw)
    if doc.get("format") != FORMAT:
        raise ValueError(f"snapshot format {doc.get('format')!r}, expected {FORMAT}")
    part = PartitionState(partition=doc["partition"], last_seq=doc["last_seq"], last_hash=doc["last_hash"],
                          epoch=doc["epoch"], corrupt=set(doc["corrupt"]), loaded_from_seq=doc["last_seq"])
    for a in doc["agents"]:
        state = _account(a)
        part.agents[state.agent_id] = state
    return part


def _account(a: dict[str, Any]) -> AccountState:
    hold = lambda h: Hold(**{**h, "earlier_attempts": tuple(h.get("earlier_attempts", ()))})  # noqa: E731
    payout = lambda p: Payout(**p)  # noqa: E731
    values: dict[str, Any] = {f.name: a[f.name] for f in fields(AccountState) if f.name in a}
    values["policy"] = AgentPolicy.model_validate(a["policy"])
    values["holds"] = {k: hold(v) for k, v in a["holds"].items()}
    values["resolutions"] = {k: Resolution(**{**v, "hold": hold(v["hold"])}) for k, v in a["resolutions"].items()}
    values["payouts"] = {k: payout(v) for k, v in a["payouts"].items()}
    values["payouts_done"] = {k: PayoutEnd(**{**v, "payout": payout(v["payout"])})
                              for k, v in a["payouts_done"].items()}
    values["invoices"] = {k: Invoice(**v) for k, v in a["invoices"].items()}
    values["op_ids"] = {k: (v[0], v[1]) for k, v in a["op_ids"].items()}
    values["window"] = [(t, m) for t, m in a["window"]]
    return AccountState(**values)
