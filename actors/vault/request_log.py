"""The request log in DuckDB: the gateway's RequestRecords, projected for ``stats`` and ``requests`` reports.

Records come from the events stream through an ordered consumer starting after the last applied stream
sequence, which is stored in the same transaction as the rows: replays change nothing. Like the ledger
projection, rows are bulk-loaded from a JSON-lines spool (parameter binding is far too slow on a busy
gateway); reads use plain bound parameters.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from actors.runtime import unsubscribe_quietly
from schemas import subjects
from schemas.requests import RequestList, RequestRecord, RequestsQuery, StatsQuery, StatsReply, StatsRow

from .projection import Projection, SpooledTable, where_clause, widen

log = logging.getLogger("arbstr.vault.requests")

_COLUMNS = {
    "stream_seq": "BIGINT", "request_id": "VARCHAR", "agent_id": "VARCHAR", "endpoint": "VARCHAR",
    "model": "VARCHAR", "provider": "VARCHAR", "upstream_model": "VARCHAR", "tier": "VARCHAR",
    "status": "INTEGER", "success": "BOOLEAN", "streamed": "BOOLEAN", "input_tokens": "BIGINT",
    "output_tokens": "BIGINT", "cost_msat": "HUGEINT", "baseline_msat": "HUGEINT", "latency_ms": "DOUBLE",
    "overhead_ms": "DOUBLE", "at_ms": "BIGINT", "estimated": "BOOLEAN",
}
# Added after the first release: an older file gets them by ALTER TABLE (NULL in its old rows).
_ADDED_COLUMNS = {
    "provider_cost_msat": "HUGEINT", "cost_drift": "BOOLEAN",
    "predicted_tier": "VARCHAR", "tier_confidence": "DOUBLE", "tier_scorer": "VARCHAR",
    "tier_features": "STRUCT(name VARCHAR, weight DOUBLE)[]",
}
_COLUMNS.update(_ADDED_COLUMNS)
_RECORD_FIELDS = [c for c in _COLUMNS if c != "stream_seq"]
_SCHEMA = ("CREATE TABLE IF NOT EXISTS requests (" + ", ".join(f"{k} {v}" for k, v in _COLUMNS.items()) + ");"
           + "".join(f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {k} {v};" for k, v in _ADDED_COLUMNS.items())
           + "CREATE TABLE IF NOT EXISTS projection_meta (k VARCHAR PRIMARY KEY, v BIGINT NOT NULL);")
_READ = ("INSERT INTO requests (" + ", ".join(_COLUMNS) + ") SELECT " + ", ".join(_COLUMNS)
         + " FROM read_json(?, format = 'newline_delimited', columns = {"
         + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "})")
_META_KEY = "requests_seq"

_GROUP_KEY = {
    "model": "model", "provider": "provider", "tier": "tier", "agent": "agent_id",
    "day": "strftime(epoch_ms(at_ms), '%Y-%m-%d')",
}
_SORT = {"at": "at_ms", "cost": "cost_msat", "latency": "latency_ms"}


def _record(row: tuple[Any, ...]) -> RequestRecord:
    fields = dict(zip(_RECORD_FIELDS, row))
    if fields.get("tier_features") is None:  # a row from before the column existed
        fields["tier_features"] = []
    if fields.get("cost_drift") is None:
        fields["cost_drift"] = False
    return RequestRecord(**fields)


class RequestLog(SpooledTable):
    def __init__(self, projection: Projection) -> None:
        # Shares the ledger projection's database and lock: one DuckDB file, one writer at a time.
        with projection._lock:
            projection.db.execute(_SCHEMA)
            widen(projection.db, "requests", ["cost_msat", "baseline_msat", "provider_cost_msat"])
        self._init_spool(projection.db, projection._lock, projection._spool, "requests.jsonl", _READ, _META_KEY)
        self._sub: Any = None

    def add(self, record: RequestRecord, stream_seq: int) -> None:
        if stream_seq > self._pending_seq:
            self._append([record.model_dump_json(include=set(_RECORD_FIELDS))[:-1] + f',"stream_seq":{stream_seq}}}'],
                         stream_seq)

    # --- the consumer ----------------------------------------------------------------------------------
    async def follow(self, nc: NATS) -> None:
        async def on_msg(msg: Msg) -> None:
            seq = int(msg.metadata.sequence.stream)
            try:
                self.add(RequestRecord.model_validate_json(msg.data), seq)
            except ValidationError:
                log.warning("request log: undecodable record at seq %s (skipped)", seq)
                self.skip(seq)

        start = self.applied_seq + 1
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start) \
            if start > 1 else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        self._sub = await nc.jetstream().subscribe(f"{subjects.REQUESTS_PREFIX}.>", cb=on_msg,
                                                   ordered_consumer=True, stream=subjects.STREAM_EVENTS,
                                                   config=config)

    async def stop(self) -> None:
        await unsubscribe_quietly(self._sub)
        self._sub = None

    # --- reports ---------------------------------------------------------------------------------------
    def stats(self, q: StatsQuery) -> StatsReply:
        self.flush()
        key = _GROUP_KEY[q.group_by] if q.group_by else "NULL"
        where, params = where_clause(q.agent_id, q.since_ms, q.until_ms, model=q.model, provider=q.provider)
        sql = (f"SELECT {key} AS k, count(*), count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success), "
               "count(*) FILTER (WHERE streamed), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
               "coalesce(sum(cost_msat), 0), coalesce(sum(baseline_msat), 0), quantile_cont(latency_ms, 0.5), "
               "quantile_cont(latency_ms, 0.95), quantile_cont(overhead_ms, 0.5) "
               f"FROM requests{where}" + (" GROUP BY k ORDER BY 8 DESC, k" if q.group_by else ""))
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
        out = []
        for k, n, ok, bad, streamed, tin, tout, cost, base, p50, p95, o50 in rows:
            out.append(StatsRow(key=None if k is None else str(k), requests=n, succeeded=ok, failed=bad,
                                streamed=streamed, input_tokens=int(tin), output_tokens=int(tout),
                                cost_msat=int(cost), baseline_msat=int(base), savings_msat=int(base) - int(cost),
                                latency_p50_ms=p50, latency_p95_ms=p95, overhead_p50_ms=o50))
        return StatsReply(group_by=q.group_by, rows=out)

    def requests(self, q: RequestsQuery) -> RequestList:
        self.flush()
        where, params = where_clause(q.agent_id, q.since_ms, q.until_ms, model=q.model, provider=q.provider,
                               success=q.success, streamed=q.streamed)
        order = f"{_SORT[q.sort]} {q.order.upper()}, stream_seq {q.order.upper()}"
        with self._lock:
            total = self.db.execute(f"SELECT count(*) FROM requests{where}", params).fetchone()
            rows = self.db.execute(f"SELECT {', '.join(_RECORD_FIELDS)} FROM requests{where} ORDER BY {order} "
                                   "LIMIT ? OFFSET ?", params + [q.limit, q.offset]).fetchall()
        items = [_record(r) for r in rows]
        return RequestList(total=int(total[0]) if total else 0, items=items)
