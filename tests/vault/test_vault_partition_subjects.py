"""Commands on partition subjects (where gateways send reserves and settles, straight to the owner): each op is
served by the endpoint built for it once, counted per op and status, and an unknown op is a 404, not silence."""

from __future__ import annotations

import nats
import pytest

from arbstr.natsserver import NatsServer
from gateway.bus import Bus
from schemas import exchanges, subjects
from schemas.config import parse_config
from schemas.errors import ArbstrError
from schemas.exchanges import decode_error
from schemas.router import Envelope
from schemas.vault import AgentRoute, Empty, ReserveReply, ReserveRequest, SettleCommand, TokenRef
from tests.support.stack import vault_section
from tests.vault.test_vault_crash import Vaults, funded_agent, token_hash

pytestmark = pytest.mark.slow

ENV = Envelope(input_tokens=2, output_tokens=8, input_rate=1_000_000, output_rate=1_000_000, max_output_tokens=8)


async def test_reserve_and_settle_on_the_partition_subject_and_an_unknown_op(fresh_nats: NatsServer) -> None:
    vaults = await Vaults(fresh_nats.url, parse_config({"vault": vault_section()})).start(1)
    nc = await nats.connect(fresh_nats.url)
    try:
        bus = Bus(nc, 5.0)
        agent_id, token = await funded_agent(bus, vaults, "direct", 100_000)
        where = await bus.ask(exchanges.WHOAMI, TokenRef(token_hash=token_hash(token)))
        assert isinstance(where, AgentRoute) and where.agent_id == agent_id
        k = where.partition
        for n in range(3):  # the same cached endpoint serves every message of an op
            hold = await bus.ask(exchanges.RESERVE, ReserveRequest(request_id=f"r{n}", token_hash=token_hash(token),
                                                                   envelope=ENV, agent_id=agent_id),
                                 partition=k)
            assert isinstance(hold, ReserveReply) and hold.amount_msat == 10_000
            await bus.ask(exchanges.SETTLE, SettleCommand(kind="settle", request_id=f"r{n}", agent_id=agent_id,
                                                          cost_msat=4_000), partition=k)
        with pytest.raises(ArbstrError) as reused:
            await bus.ask(exchanges.RESERVE, ReserveRequest(request_id="r0", token_hash=token_hash(token),
                                                            envelope=ENV, agent_id=agent_id), partition=k)
        assert reused.value.status == 409 and reused.value.code == "request_id_reused"
        state = vaults.actors[0].book.state(agent_id)
        assert (state.spent_msat, state.pending_msat, state.available_msat) == (12_000, 0, 88_000)
        ops = vaults.actors[0].partition_ops
        assert ops["reserve"] == {"200": 3, "409": 1} and ops["settle"] == {"200": 3}

        reply = await nc.request(f"{subjects.VAULT_PARTITION_PREFIX}.{k}.no-such-op", Empty().model_dump_json().encode(),
                                 timeout=5)
        error = decode_error(reply.data, reply.headers)
        assert error is not None and error.status == 404 and error.code == "unknown_op"
    finally:
        await nc.close()
        await vaults.stop()


async def test_a_command_forwarded_to_an_instance_letting_the_partition_go_is_asked_again(
        fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance a forward reaches answers "moved" (it is handing the partition over): the forwarder asks again
    until the next owner answers, so the caller never sees the takeover; an owner that never comes is a 503 once
    the wait is over."""
    from dataclasses import replace

    from actors.runtime.endpoints import error_reply
    from actors.vault import routing
    from actors.vault.actor import VaultActor
    from actors.vault.group_commit import moved

    nc = await nats.connect(fresh_nats.url)
    forwarder = VaultActor(parse_config({"vault": vault_section()}))
    forwarder.nc = nc
    op = forwarder._ops["settle"]
    k = 3
    cmd = SettleCommand(kind="settle", request_id="r1", agent_id="agt_x", cost_msat=1)
    seen: list[str] = []
    moved_answers = {"left": 2}

    async def departing_then_new_owner(msg: nats.aio.msg.Msg) -> None:
        seen.append(dict(msg.headers or {}).get(routing.H_FORWARDED, ""))
        if moved_answers["left"] > 0:
            moved_answers["left"] -= 1
            data, headers = error_reply(moved(k))
            await nc.publish(msg.reply, data, headers=headers)
        else:
            await nc.publish(msg.reply, Empty().model_dump_json().encode())

    sub = await nc.subscribe(op.exchange.on_partition(k), cb=departing_then_new_owner)
    try:
        reply = await forwarder._forward(k, op, cmd, {})
        assert decode_error(reply.data, reply.headers) is None and len(seen) == 3
        assert all(s == forwarder.instance for s in seen)  # marked as forwarded: never passed on again

        # An op a second delivery may not be recognised by (a withdrawal without an id, say) is not asked again.
        moved_answers["left"], seen[:] = 1, []
        reply = await forwarder._forward(k, replace(op, retry_moved=False), cmd, {})
        error = decode_error(reply.data, reply.headers)
        assert error is not None and error.code == "partition_moved" and len(seen) == 1
        assert not forwarder._ops["agent-withdraw"].retry_moved and not forwarder._ops["admin-create-agent"].retry_moved

        moved_answers["left"] = 10**6  # nobody takes the partition
        monkeypatch.setattr(routing, "FORWARD_WAIT_S", 0.3)
        reply = await forwarder._forward(k, op, cmd, {})
        error = decode_error(reply.data, reply.headers)
        assert error is not None and (error.status, error.code) == (503, "partition_moved")
    finally:
        await sub.unsubscribe()
        await nc.close()
