"""DuckDB projection of the ledger for history, audit and reports. It never decides anything about money.

Rows are keyed by (agent_id, seq) and the last applied stream sequence is stored with them, so feeding the
same entries twice, or replaying the stream from sequence 1 into an existing file, changes nothing.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

import duckdb

from schemas.ledger import LedgerEvent, event_hash
from schemas.vault import HistoryItem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    stream_seq BIGINT NOT NULL,
    agent_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    part INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    op_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    rid VARCHAR,
    amount_msat BIGINT NOT NULL,
    provider VARCHAR,
    model VARCHAR,
    body VARCHAR NOT NULL,
    hash VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
CREATE TABLE IF NOT EXISTS projection_meta (k VARCHAR PRIMARY KEY, v BIGINT NOT NULL);
"""

_COLUMNS = 14


def _amount(body: Any) -> int:
    for attr in ("charged_msat", "amount_msat"):
        value = getattr(body, attr, None)
        if isinstance(value, int):
            return value
    return 0


def event_row(event: LedgerEvent, stream_seq: int) -> tuple[Any, ...]:
    body = event.body
    return (stream_seq, event.agent_id, event.seq, event.part, event.at_ms, event.op_id, body.kind,
            getattr(body, "rid", None), _amount(body), getattr(body, "provider", None) or None,
            getattr(body, "model", None) or None, json.dumps(body.model_dump(mode="json"), sort_keys=True),
            event_hash(event), event.prev_hash)


class Projection:
    def __init__(self, path: str = "") -> None:
        self.db = duckdb.connect(path or ":memory:")
        self.db.execute(_SCHEMA)
        row = self.db.execute("SELECT v FROM projection_meta WHERE k = 'stream_seq'").fetchone()
        self.applied_seq = int(row[0]) if row else 0
        self._pending: list[tuple[Any, ...]] = []
        self._pending_seq = self.applied_seq
        self._lock = threading.Lock()

    def add(self, events: list[LedgerEvent], stream_seq: int) -> None:
        if stream_seq <= self.applied_seq:
            return
        self._pending.extend(event_row(e, stream_seq) for e in events)
        self._pending_seq = max(self._pending_seq, stream_seq)

    def flush(self) -> int:
        """Write what is buffered; returns the number of rows written."""
        with self._lock:
            rows, self._pending = self._pending, []
            seq = self._pending_seq
            if not rows and seq <= self.applied_seq:
                return 0
            self.db.execute("BEGIN")
            try:
                for i in range(0, len(rows), 500):
                    chunk = rows[i:i + 500]
                    placeholders = ",".join(["(" + ",".join(["?"] * _COLUMNS) + ")"] * len(chunk))
                    self.db.execute(f"INSERT OR IGNORE INTO ledger VALUES {placeholders}",
                                    [v for r in chunk for v in r])
                self.db.execute("INSERT OR REPLACE INTO projection_meta VALUES ('stream_seq', ?)", [seq])
                self.db.execute("COMMIT")
            except Exception:
                self.db.execute("ROLLBACK")
                self._pending = rows + self._pending
                raise
            self.applied_seq = seq
            return len(rows)

    def history(self, agent_id: Optional[str], since_ms: Optional[int], limit: int) -> list[HistoryItem]:
        self.flush()
        where, params = [], []
        if agent_id is not None:
            where.append("agent_id = ?")
            params.append(agent_id)
        if since_ms is not None:
            where.append("at_ms >= ?")
            params.append(since_ms)
        sql = ("SELECT agent_id, seq, at_ms, kind, op_id, rid, amount_msat, body, hash, prev_hash FROM ledger"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY stream_seq DESC, seq DESC LIMIT ?")
        params.append(limit)
        out = []
        for agent, seq, at_ms, kind, op_id, rid, amount, body, h, prev in self.db.execute(sql, params).fetchall():
            out.append(HistoryItem(agent_id=agent, seq=seq, at_ms=at_ms, kind=kind, op_id=op_id, request_id=rid,
                                   amount_msat=amount, detail=json.loads(body), hash=h, prev_hash=prev))
        return out

    def totals(self) -> dict[str, int]:
        """Per-kind sums, for cross-checking the books against the projection."""
        self.flush()
        rows = self.db.execute("SELECT kind, sum(amount_msat) FROM ledger GROUP BY kind").fetchall()
        return {k: int(v or 0) for k, v in rows}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()
