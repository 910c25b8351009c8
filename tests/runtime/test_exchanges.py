"""The table of bus exchanges (``schemas/exchanges.py``): every subject named in ``schemas/subjects.py``, the error
codec round-trips and keeps its wire form, and the actors serve exactly the exchanges of the table."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from actors.breaker.actor import BreakerActor
from actors.pricing.actor import PricingActor
from actors.router.actor import RouterActor
from actors.runtime.endpoints import answer, serve
from actors.vault.actor import VaultActor
from schemas import exchanges, subjects
from schemas.errors import ArbstrError
from schemas.exchanges import Exchange, decode_error, encode_error, reply_status
from schemas.router import RouteRequest
from schemas.vault import Empty
from tests.support.stack import demo_config, vault_section

SUBJECT_CONSTANTS = {v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str)}


def _named_in_subjects(subject: str) -> bool:
    """A constant of subjects.py, or one its helpers make for an agent or admin command."""
    if subject in SUBJECT_CONSTANTS:
        return True
    op = subject.rsplit(".", 1)[1]
    return subject in (subjects.vault_agent(op), subjects.vault_admin(op))


def test_every_exchange_subject_is_named_in_subjects() -> None:
    bad = [(e.name, e.subject) for e in exchanges.ALL if e.subject and not _named_in_subjects(e.subject)]
    assert not bad, f"subjects not named in schemas/subjects.py: {bad}"
    assert all(e.subject.startswith(subjects.PREFIX + ".") for e in exchanges.ALL if e.subject)


def test_partition_subjects_are_the_owner_subjects() -> None:
    for e in exchanges.VAULT.values():
        assert e.on_partition(7) == subjects.vault_partition(7, e.name)
    with pytest.raises(ValueError):
        exchanges.ROUTE.on_partition(0)
    # Only vault exchanges are served without a subject of their own (partition subjects only).
    assert all(e.subject or e.partitioned for e in exchanges.ALL)


def test_names_and_subjects_are_unique() -> None:
    vault_names = [e.name for e in exchanges.ALL if e.partitioned]
    assert len(vault_names) == len(set(vault_names))
    named = [e.subject for e in exchanges.ALL if e.subject]
    assert len(named) == len(set(named)) == len(exchanges.BY_SUBJECT)


def test_the_wire_is_as_before() -> None:
    """Byte-compatible with what actors and gateways exchanged before the table: subjects and op names."""
    by_name = {e.name: e for e in exchanges.ALL}
    assert by_name["route"].subject == "arbstr.v1.router.route"
    assert by_name["admin-create-agent"].subject == "arbstr.v1.vault.admin.create_agent"
    assert by_name["agent-me"].subject == "arbstr.v1.vault.agent.me"
    assert exchanges.RESERVE.on_partition(3) == "arbstr.v1.vault.p.3.reserve"
    assert exchanges.VAULT["settle"].on_partition(0) == "arbstr.v1.vault.p.0.settle"
    assert exchanges.VAULT["release"] is exchanges.RELEASE


ERRORS = [
    ArbstrError(402, "insufficient balance", code="insufficient_balance"),
    ArbstrError(429, "daily limit", code="daily_limit", headers={"retry-after": "17", "x-should-retry": "false"}),
    ArbstrError(400, "bad field", code="invalid_message", param="envelope.input_tokens"),
    ArbstrError(503, "x" * 500, type="service_unavailable"),
    ArbstrError(500, "ünïcode ✓"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: str(e.status))
def test_the_error_codec_round_trips(err: ArbstrError) -> None:
    data, headers = encode_error(err)
    back = decode_error(data, headers)
    assert back is not None
    assert (back.status, back.message, back.code, back.param, back.type, back.headers) == (
        err.status, err.message, err.code, err.param, err.type, err.headers)
    assert reply_status(headers) == str(err.status)


def test_the_error_codec_wire_form() -> None:
    data, headers = encode_error(ArbstrError(429, "slow down", code="rate_limited", headers={"retry-after": "2"}))
    assert headers == {"Nats-Service-Error": "slow down", "Nats-Service-Error-Code": "429",
                       "X-Http-retry-after": "2"}
    assert data == b'{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limited"}}'
    assert len(encode_error(ArbstrError(500, "y" * 300))[1][subjects.H_SERVICE_ERROR]) == 200


def test_decoding_a_reply_or_a_malformed_error() -> None:
    assert decode_error(b'{"ok": true}', None) is None
    assert decode_error(b'{"ok": true}', {subjects.H_REQUEST_ID: "r1"}) is None
    assert reply_status(None) == "200"
    odd = decode_error(b"not json", {subjects.H_SERVICE_ERROR_CODE: "teapot", subjects.H_SERVICE_ERROR: "boom",
                                     "X-Http-retry-after": "1"})
    assert odd is not None and (odd.status, odd.message, odd.headers) == (500, "boom", {"retry-after": "1"})


def _served() -> dict[tuple[str, str], tuple[type, Any, Any]]:
    """(name, subject) -> (request model, auth, reply annotation) of everything the actors serve."""
    config = demo_config("http://127.0.0.1:9", vault=vault_section())
    served: dict[tuple[str, str], tuple[type, Any, Any]] = {}
    for actor in (RouterActor(config), PricingActor(config), BreakerActor(config)):
        for ep in actor.endpoints():
            served[(ep.name, ep.subject)] = (ep.request_model, ep.auth,
                                             typing.get_type_hints(ep.handler).get("return"))
    vault = VaultActor(config)
    routed = {ep.name: ep for ep in vault.endpoints()}
    for op in vault._op_table():
        ep = routed.get(op.name) or op.endpoint(op.handler)  # an op on partition subjects only
        served[(op.name, ep.subject)] = (ep.request_model, ep.auth, typing.get_type_hints(op.handler).get("return"))
    return served


def test_the_actors_serve_exactly_the_table() -> None:
    served = _served()
    table = {(e.name, e.subject): (e.request, e.auth, e.reply) for e in exchanges.ALL}
    assert sorted(set(served) - set(table)) == [], "served but not in schemas/exchanges.py"
    assert sorted(set(table) - set(served)) == [], "in schemas/exchanges.py but served by no actor"
    wrong = {k: (served[k], table[k]) for k in table if served[k] != table[k]}
    assert not wrong, f"(request, auth, reply) served differ from the table: {wrong}"


async def test_an_endpoint_serves_its_exchange() -> None:
    """An exchange served through the one codec: a bad message is a 400 in the codec's form."""
    async def handler(msg: RouteRequest, headers: dict[str, str]) -> Empty:
        return Empty()

    ep = serve(exchanges.ROUTE, handler)
    assert (ep.name, ep.subject, ep.request_model) == ("route", subjects.ROUTER_ROUTE, RouteRequest)
    data, headers, status = await answer(ep, b"{}", {}, None, "test")
    err = decode_error(data, headers)
    assert status == "400" and err is not None and err.code == "invalid_message"
    assert isinstance(exchanges.ROUTE, Exchange)
