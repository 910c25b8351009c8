"""The request log in DuckDB: the gateway's RequestRecords, projected for ``stats`` and ``requests`` reports.

Records come from the events stream through an ordered consumer starting after the last applied stream
sequence, which is stored in the same transaction as the rows: replays change nothing. Like the ledger
projection, rows are bulk-loaded from a JSON-lines spool (parameter binding is far too slow on a busy
gateway); reads use plain bound parameters.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from actors.runtime.jetstream import HEARTBEAT_S
from actors.runtime.tasks import unsubscribe_quietly
from schemas import subjects
from schemas.common import Tier
from schemas.requests import RequestList, RequestRecord, RequestsQuery, StatsQuery, StatsReply, StatsRow
from schemas.router import Scorer

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
    "pinned_costs": "STRUCT(provider VARCHAR, model VARCHAR, cost_msat HUGEINT)[]",
}
_COLUMNS.update(_ADDED_COLUMNS)
_RECORD_FIELDS = [c for c in _COLUMNS if c != "stream_seq"]
_SCHEMA = ("CREATE TABLE IF NOT EXISTS requests (" + ", ".join(f"{k} {v}" for k, v in _COLUMNS.items()) + ");"
           + "".join(f"ALTER TABLE requests ADD COLUMN IF NOT EXISTS {k} {v};" for k, v in _ADDED_COLUMNS.items())
           + "CREATE TABLE IF NOT EXISTS projection_meta (k VARCHAR PRIMARY KEY, v BIGINT NOT NULL);")

# A record is spooled as it came from the stream (``stream_seq`` put in front) and DuckDB reads it: the vault's
# event loop no longer decodes and re-encodes every record it publishes (~8 % of its CPU under load). What
# pydantic enforced on the way in is enforced by the load: a row missing a required field or with a negative
# count is not loaded (as an undecodable record was skipped), a field left out takes its default, and a line that
# cannot load at all is left out (see ``SpooledTable.flush``).
def _column(name: str) -> str:
    field = RequestRecord.model_fields[name]
    if field.is_required() or field.default is None or field.default_factory is not None:
        return name
    return f"coalesce({name}, {str(field.default).lower() if isinstance(field.default, bool) else field.default})"


def _one_of(name: str, literal: Any) -> str:
    return f"({name} IS NULL OR {name} IN ({', '.join(repr(v) for v in get_args(literal))}))"


def _every(name: str, condition: str) -> str:
    """Every item of a list column is there and meets ``condition`` (on ``x``), as the model requires."""
    return f"coalesce(list_bool_and(list_transform({name}, lambda x: x IS NOT NULL AND {condition})), true)"


_REQUIRED = [k for k in _RECORD_FIELDS if RequestRecord.model_fields[k].is_required()]
_NOT_NEGATIVE = ["input_tokens", "output_tokens", "cost_msat", "baseline_msat", "latency_ms", "overhead_ms",
                 "at_ms", "provider_cost_msat"]
_READ = ("INSERT INTO requests (" + ", ".join(_COLUMNS) + ") SELECT stream_seq, "
         + ", ".join(_column(k) for k in _RECORD_FIELDS)
         + " FROM read_json(?, format = 'newline_delimited', columns = {"
         + ", ".join(f"'{k}': '{v}'" for k, v in _COLUMNS.items()) + "}) WHERE "
         + " AND ".join([f"{k} IS NOT NULL" for k in _REQUIRED] + [f"coalesce({k}, 0) >= 0" for k in _NOT_NEGATIVE]
                        + ["coalesce(tier_confidence, 0) BETWEEN 0 AND 1", _one_of("predicted_tier", Tier),
                           _one_of("tier_scorer", Scorer),
                           _every("pinned_costs", "x.provider IS NOT NULL AND x.model IS NOT NULL "
                                                  "AND coalesce(x.cost_msat >= 0, false)"),
                           _every("tier_features", "x.name IS NOT NULL AND x.weight IS NOT NULL")]))
_META_KEY = "requests_seq"

_GROUP_KEY = {
    "model": "model", "provider": "provider", "tier": "tier", "agent": "agent_id",
    "day": "strftime(epoch_ms(at_ms), '%Y-%m-%d')",
}
_SORT = {"at": "at_ms", "cost": "cost_msat", "latency": "latency_ms"}
# A request some provider served and billed (its offers are the savings baseline's candidates).
_BILLED = "(cost_msat > 0 OR input_tokens > 0 OR output_tokens > 0)"
# Per group and offer: what the group's billed requests would have cost there, and how many it could serve.
_OFFERS = ("SELECT k, o.provider, o.model, sum(o.cost_msat), count(*) FROM ("
           "SELECT {key} AS k, unnest(pinned_costs) AS o FROM requests{where}) GROUP BY ALL")


def cheapest_single_offers(served: dict[Any, int], offers: list[tuple[Any, ...]]) -> dict[Any, tuple[str, str, int]]:
    """Per group: the cheapest (provider, model, total) among the offers able to serve every billed request of it."""
    best: dict[Any, tuple[str, str, int]] = {}
    for k, provider, model, total, able in offers:
        if able != served.get(k):
            continue  # some request of the group could not have been served there
        candidate = (str(provider), str(model), int(total))
        current = best.get(k)
        if current is None or (candidate[2], candidate[0], candidate[1]) < (current[2], current[0], current[1]):
            best[k] = candidate
    return best


def _record(row: tuple[Any, ...]) -> RequestRecord:
    fields = dict(zip(_RECORD_FIELDS, row))
    if fields.get("tier_features") is None:  # a row from before the column existed
        fields["tier_features"] = []
    if fields.get("cost_drift") is None:
        fields["cost_drift"] = False
    if fields.get("pinned_costs") is None:
        fields["pinned_costs"] = []
    return RequestRecord(**fields)


def _validated_line(record: RequestRecord, stream_seq: int) -> str:
    return record.model_dump_json(include=set(_RECORD_FIELDS))[:-1] + f',"stream_seq":{stream_seq}}}'


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
            self._append([_validated_line(record, stream_seq)], stream_seq)

    def add_raw(self, raw: bytes, stream_seq: int) -> None:
        """A record as published (JSON); one that is not plainly a JSON object is read through the model first."""
        if stream_seq <= self._pending_seq:
            return
        if raw.startswith(b'{"') and raw.endswith(b"}") and b"\n" not in raw and b"\r" not in raw \
                and b'"stream_seq"' not in raw:
            try:
                self._append([f'{{"stream_seq":{stream_seq},{raw[1:].decode()}'], stream_seq)
                return
            except UnicodeDecodeError:
                pass
        try:
            self.add(RequestRecord.model_validate_json(raw), stream_seq)
        except ValidationError:
            log.warning("request log: undecodable record at seq %s (skipped)", stream_seq)
            self.skip(stream_seq)

    # --- the consumer ----------------------------------------------------------------------------------
    async def follow(self, nc: NATS) -> None:
        async def on_msg(msg: Msg) -> None:
            self.add_raw(bytes(msg.data), int(msg.metadata.sequence.stream))

        start = self.applied_seq + 1
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start) \
            if start > 1 else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        self._sub = await nc.jetstream().subscribe(f"{subjects.REQUESTS_PREFIX}.>", cb=on_msg,
                                                   ordered_consumer=True, stream=subjects.STREAM_EVENTS,
                                                   idle_heartbeat=HEARTBEAT_S, config=config)

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
        billed = where + (" AND " if where else " WHERE ") + _BILLED
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
            served = dict(self.db.execute(f"SELECT {key} AS k, count(*) FROM requests{billed} GROUP BY k",
                                          params).fetchall())
            offers = self.db.execute(_OFFERS.format(key=key, where=billed), params).fetchall()
        best = cheapest_single_offers(served, offers)
        out = []
        for k, n, ok, bad, streamed, tin, tout, cost, costliest, p50, p95, o50 in rows:
            cost = int(cost)
            pinned = best.get(k)
            if pinned is not None:
                base: dict[str, Any] = {"baseline_msat": pinned[2], "savings_baseline": "cheapest_single_provider",
                                        "baseline_provider": pinned[0], "baseline_model": pinned[1]}
            elif not served.get(k):  # nothing billed: nothing to compare
                base = {"baseline_msat": cost, "savings_baseline": "cheapest_single_provider"}
            else:  # no single offer could have served all of them (or rows from before offers were kept)
                base = {"baseline_msat": int(costliest), "savings_baseline": "costliest_candidate"}
            out.append(StatsRow(key=None if k is None else str(k), requests=n, succeeded=ok, failed=bad,
                                streamed=streamed, input_tokens=int(tin), output_tokens=int(tout), cost_msat=cost,
                                savings_msat=base["baseline_msat"] - cost, latency_p50_ms=p50, latency_p95_ms=p95,
                                overhead_p50_ms=o50, **base))
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
