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
