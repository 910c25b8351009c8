"""DuckDB projection of the ledger for history, audit and reports. It never decides anything about money.

The last applied stream sequence is stored in the same transaction as the rows, and entries at or below it
are skipped: feeding the same entries twice, or replaying the stream from sequence 1 into an existing file,
changes nothing. Rows are bulk-loaded from a JSON-lines file in a worker thread: DuckDB binds Python
parameters at ~0.2 ms a row, which would stall the vault's event loop; a bulk load is ~50x cheaper.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
from itertools import groupby
from typing import Any, Optional

import duckdb

import orjson

from schemas.ledger import LedgerEvent, batch_hash, event_hash
from schemas.vault import HistoryItem

log = logging.getLogger("arbstr.vault.projection")

# What a bulk load raises for input it cannot turn into rows (malformed JSON, a value of the wrong type, a NOT
# NULL column left empty), as opposed to a failure of the database itself.
BAD_INPUT = (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.ConstraintException)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    stream INTEGER NOT NULL,
    stream_seq BIGINT NOT NULL,
    agent_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    part INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    op_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    rid VARCHAR,
    amount_msat HUGEINT NOT NULL,
    provider VARCHAR,
    model VARCHAR,
    body VARCHAR NOT NULL,
    hash VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_meta (k VARCHAR PRIMARY KEY, v BIGINT NOT NULL);
"""

# A spool line is one ledger message: ``{"stream", "stream_seq", "hash", "doc"}`` with the batch itself as ``doc``,
# its bytes copied as they came from the stream. DuckDB parses it and unnests its entries and events into rows, so
# the vault's event loop does no per-event work for the projection (it did ~8 % of its CPU turning every event
# into a row in Python). Fields the rows do not need (records, batch ids) are skipped by the reader.
_DOC = ("STRUCT(prev_hash VARCHAR, entries STRUCT(events STRUCT(op_id VARCHAR, agent_id VARCHAR, seq BIGINT, "
        "part INTEGER, at_ms BIGINT, body JSON)[])[])")
_INTEGER_JSON = "('UBIGINT', 'BIGINT')"  # isinstance(value, int): not a null, a float or a string


def _body_amount(key: str) -> str:
    return f"json_type(e.body, '$.{key}') IN {_INTEGER_JSON}"


_READ = (
    "INSERT INTO ledger SELECT stream, stream_seq, e.agent_id, e.seq, coalesce(e.part, 0), e.at_ms, e.op_id, "
    "e.body->>'$.kind', e.body->>'$.rid', "
    f"CASE WHEN {_body_amount('charged_msat')} THEN CAST(e.body->>'$.charged_msat' AS HUGEINT) "
    f"WHEN {_body_amount('amount_msat')} THEN CAST(e.body->>'$.amount_msat' AS HUGEINT) ELSE 0 END, "
    "nullif(e.body->>'$.provider', ''), nullif(e.body->>'$.model', ''), CAST(e.body AS VARCHAR), hash, prev_hash "
    "FROM (SELECT stream, stream_seq, hash, prev_hash, unnest(entry.events) AS e FROM ("
    "SELECT stream, stream_seq, hash, coalesce(doc.prev_hash, '') AS prev_hash, unnest(doc.entries) AS entry "
    "FROM read_json(?, format = 'newline_delimited', "
    f"columns = {{'stream': 'INTEGER', 'stream_seq': 'BIGINT', 'hash': 'VARCHAR', 'doc': '{_DOC}'}})))")
_BATCH_START = b'{"kind":"batch",'  # how the journal's writer (pydantic) starts every batch


def _line(stream: int, stream_seq: int, digest: str, doc: str) -> str:
    return f'{{"stream":{stream},"stream_seq":{stream_seq},"hash":"{digest}","doc":{doc}}}'


def lines_of(raw: bytes, stream: int, stream_seq: int) -> list[str]:
    """One ledger message as spool lines: a batch as it is (one line); an entry written before batches as one line
    per event, each a batch of its own under the event's own link of the per-event hash chain."""
    if raw.startswith(_BATCH_START) and b"\n" not in raw and b"\r" not in raw:
        return [_line(stream, stream_seq, batch_hash(raw), raw.decode())]
    doc = orjson.loads(raw)
    if doc.get("kind") == "batch":
        return [_line(stream, stream_seq, batch_hash(raw), orjson.dumps(doc).decode())]
    lines = []
    for e in doc.get("events", ()):
        link = event_hash(LedgerEvent.model_validate(e))
        one = {"prev_hash": e.get("prev_hash", ""), "entries": [{"events": [e]}]}
        lines.append(_line(stream, stream_seq, link, orjson.dumps(one).decode()))
    return lines


def bulk_load(db: duckdb.DuckDBPyConnection, path: str, read_sql: str, rows: list[str], meta_key: str,
              seq: int) -> None:
    """Load JSON-lines ``rows`` with ``read_sql`` and record ``seq`` under ``meta_key``, in one transaction."""
    cur = db.cursor()
    try:
        cur.execute("BEGIN")
        if rows:
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(rows))
                f.write("\n")
            cur.execute(read_sql, [path])
        cur.execute("INSERT OR REPLACE INTO projection_meta VALUES (?, ?)", [meta_key, seq])
        cur.execute("COMMIT")
    except Exception:
        cur.execute("ROLLBACK")
        raise
    finally:
        cur.close()


def widen(db: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> None:
    """Money columns are 128-bit: a journal written before deposits were bounded may hold amounts or sums past
    2^63, and a report must never fail on one. Files from before are widened in place (no rebuild needed)."""
    for column in columns:
        row = db.execute("SELECT data_type FROM duckdb_columns() WHERE table_name = ? AND column_name = ?",
                         [table, column]).fetchone()
        if row is not None and row[0] != "HUGEINT":
            db.execute(f"ALTER TABLE {table} ALTER {column} SET DATA TYPE HUGEINT")


def where_clause(agent_id: Optional[str], since_ms: Optional[int], until_ms: Optional[int],
                 **equal: Any) -> tuple[str, list[Any]]:
    """`` WHERE …`` and its parameters for the filters given (None: no filter) of either projection."""
    clauses: list[str] = []
    params: list[Any] = []
    if agent_id is not None:
        clauses.append("agent_id = ?")
        params.append(agent_id)
    if since_ms is not None:
        clauses.append("at_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        clauses.append("at_ms < ?")
        params.append(until_ms)
    for column, value in equal.items():
        if value is None:
            continue
        if column == "model":  # the model asked for, or the one it was served as
            clauses.append("(model = ? OR upstream_model = ?)")
            params += [value, value]
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# Version 2: entries are fed in stream order. A file written by version 1 may lack rows below its stored
# sequence (an own write acked ahead of another instance's entry made that entry look already loaded).
# Version 3: ledgers in several streams (a ``stream`` column, an applied sequence per stream).
PROJECTION_VERSION = 3


def _rebuild_if_older(db: duckdb.DuckDBPyConnection) -> None:
    """A projection file from an older version is emptied: the vault replays the ledger into it from sequence 1."""
    row = db.execute("SELECT v FROM projection_meta WHERE k = 'ledger_version'").fetchone()
    if row is not None and int(row[0]) >= PROJECTION_VERSION:
        return
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute("DROP TABLE IF EXISTS ledger")
        db.execute(_SCHEMA)
        db.execute("DELETE FROM projection_meta WHERE k LIKE 'stream_seq%'")
        db.execute("INSERT OR REPLACE INTO projection_meta VALUES ('ledger_version', ?)", [PROJECTION_VERSION])
        db.execute("COMMIT")
    except Exception:
        db.execute("ROLLBACK")
        raise


class SpooledTable:
    """Rows buffered as JSON lines and bulk-loaded into one table, with the stream sequence they reach stored in
    ``projection_meta[meta_key]`` in the same transaction: loading the same entries twice changes nothing."""

    def _init_spool(self, db: duckdb.DuckDBPyConnection, lock: threading.Lock, spool: str, file_name: str,
                    read_sql: str, meta_key: str) -> None:
        self.db, self._lock, self._spool = db, lock, spool
        self._spool_file, self._read_sql, self._meta_key = os.path.join(spool, file_name), read_sql, meta_key
        with lock:
            row = db.execute("SELECT v FROM projection_meta WHERE k = ?", [meta_key]).fetchone()
        self.applied_seq = int(row[0]) if row else 0
        self._pending: list[tuple[int, str]] = []  # (stream sequence, line): several lines may share one
        self._pending_seq = self.applied_seq
        # Rows are added on the event loop while a flush runs in a thread: the buffer has its own short lock,
        # so a row appended during a flush lands in this batch or the next, never in a list already written.
        self._buffer_lock = threading.Lock()

    def _append(self, rows: list[str], stream_seq: int) -> None:
        with self._buffer_lock:
            if stream_seq <= self._pending_seq:
                return  # handed over before (a replay into an existing file, or a redelivery)
            self._pending.extend((stream_seq, row) for row in rows)
            self._pending_seq = stream_seq

    def skip(self, stream_seq: int) -> None:
        """A message with nothing to load still moves the applied sequence on."""
        with self._buffer_lock:
            self._pending_seq = max(self._pending_seq, stream_seq)

    def flush(self) -> int:
        """Write what is buffered (blocking; see ``flush_async``); returns the number of spool lines loaded."""
        with self._lock:
            with self._buffer_lock:
                pending, self._pending = self._pending, []
                seq = self._pending_seq
            if seq <= self.applied_seq:
                return 0
            try:
                bulk_load(self.db, self._spool_file, self._read_sql, [line for _, line in pending], self._meta_key,
                          seq)
            except BAD_INPUT as e:
                pending = self._load_each_message(pending, seq, e)  # puts back what it could not try itself
            except Exception:
                with self._buffer_lock:
                    self._pending = pending + self._pending
                raise
            self.applied_seq = seq
            return len(pending)

    def _load_each_message(self, pending: list[tuple[int, str]], seq: int,
                           error: Exception) -> list[tuple[int, str]]:
        """The bulk load refused something in it (a message whose lines DuckDB cannot read as rows, which nothing
        arbstr writes makes): the messages are loaded in halves, and halves of what is refused again, down to the
        single messages at fault, which are left out (as an undecodable message always was) instead of the table
        stopping there. A bad message costs about log2(n) loads, not one load per message. Returns what loaded."""
        messages = [list(group) for _, group in groupby(pending, key=lambda p: p[0])]
        loaded: list[tuple[int, str]] = []

        def split(part: list[list[tuple[int, str]]], e: Exception) -> None:
            if len(part) == 1:
                log.error("%s: the message at stream sequence %s cannot be loaded, left out (%s)", self._meta_key,
                          part[0][0][0], e)
                return
            load(part[:len(part) // 2])
            load(part[len(part) // 2:])

        def load(part: list[list[tuple[int, str]]]) -> None:
            try:
                bulk_load(self.db, self._spool_file, self._read_sql, [line for m in part for _, line in m],
                          self._meta_key, part[-1][0][0])
                loaded.extend(p for m in part for p in m)
                self.applied_seq = part[-1][0][0]
            except BAD_INPUT as e:
                split(part, e)
            except Exception:
                # Not the messages' fault (the disk, memory): from this part on, the next flush tries again.
                with self._buffer_lock:
                    self._pending = [p for p in pending if p[0] >= part[0][0][0]] + self._pending
                raise

        log.warning("%s: a bulk load refused its input (%s); finding the message at fault", self._meta_key, error)
        if messages:
            split(messages, error)  # the whole was tried already
        bulk_load(self.db, self._spool_file, self._read_sql, [], self._meta_key, seq)
        return loaded

    async def flush_async(self) -> int:
        return await asyncio.to_thread(self.flush)


class StreamRows(SpooledTable):
    """The ledger table's rows of one ledger stream, with that stream's applied sequence."""

    def __init__(self, db: duckdb.DuckDBPyConnection, lock: threading.Lock, spool: str, stream: int) -> None:
        self.stream = stream
        self._init_spool(db, lock, spool, f"rows-{stream}.jsonl", _READ, _meta_key(stream))

    def add(self, raw: bytes, stream_seq: int) -> None:
        """One ledger message; messages must come in stream order."""
        if stream_seq > self._pending_seq:
            self._append(lines_of(raw, self.stream, stream_seq), stream_seq)


def _meta_key(stream: int) -> str:
    return "stream_seq" if stream == 0 else f"stream_seq:{stream}"


class Projection:
    def __init__(self, path: str = "", streams: int = 1, memory_mb: int = 0) -> None:
        db = duckdb.connect(path or ":memory:")
        if path and memory_mb:
            # DuckDB's own default is 80 % of the machine's RAM, which its page cache of a growing file fills over
            # time; a file projection evicts to its file instead. (In memory there is nowhere to evict to.)
            db.execute(f"SET memory_limit = '{int(memory_mb)}MiB'")
        db.execute(_SCHEMA)
        widen(db, "ledger", ["amount_msat"])
        _rebuild_if_older(db)
        self.db = db
        self._lock = threading.Lock()
        self._spool = tempfile.mkdtemp(prefix="arbstr-projection-")
        self.streams = [StreamRows(db, self._lock, self._spool, i) for i in range(streams)]

    def applied(self, stream: int) -> int:
        return self.streams[stream]._pending_seq

    def flush(self) -> int:
        return sum(s.flush() for s in self.streams)

    async def flush_async(self) -> int:
        return await asyncio.to_thread(self.flush)

    def history(self, agent_id: Optional[str], since_ms: Optional[int], limit: int) -> list[HistoryItem]:
        self.flush()
        where, params = where_clause(agent_id, since_ms, None)
        sql = ("SELECT agent_id, seq, at_ms, kind, op_id, rid, amount_msat, body, hash, prev_hash FROM ledger"
               + where + " ORDER BY at_ms DESC, stream DESC, stream_seq DESC, seq DESC LIMIT ?")
        params.append(limit)
        out = []
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
        for agent, seq, at_ms, kind, op_id, rid, amount, body, h, prev in rows:
            out.append(HistoryItem(agent_id=agent, seq=seq, at_ms=at_ms, kind=kind, op_id=op_id, request_id=rid,
                                   amount_msat=amount, detail=json.loads(body), hash=h, prev_hash=prev))
        return out

    def totals(self, agent_id: Optional[str] = None, upto: Optional[dict[int, int]] = None) -> dict[str, int]:
        """Per-kind sums of amount_msat (one agent or all), for cross-checking the fold against the projection.

        ``upto`` pins the sums to the sequence of each stream the fold was read at: entries applied while the
        query runs in its thread would otherwise make a consistent pair of snapshots look like a disagreement."""
        self.flush()
        clauses: list[str] = []
        params: list[Any] = []
        if agent_id:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        if upto is not None:
            cut = " OR ".join("(stream = ? AND stream_seq <= ?)" for _ in upto)
            clauses.append(f"({cut})" if cut else "FALSE")
            for stream, seq in upto.items():
                params += [stream, seq]
        sql = ("SELECT kind, sum(amount_msat) FROM ledger" + (" WHERE " + " AND ".join(clauses) if clauses else "")
               + " GROUP BY kind")
        with self._lock:
            rows = self.db.execute(sql, params).fetchall()
        return {k: int(v or 0) for k, v in rows}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:  # DuckDB 2 refuses (does not wait) while a flush thread still uses the connection
                self.db.close()
            shutil.rmtree(self._spool, ignore_errors=True)
