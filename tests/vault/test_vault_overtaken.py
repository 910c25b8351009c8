"""An owner whose lease went while it was paused: the next owner's batches show up in the journal before the
lease's watch tells it. It must neither keep serving the partitions nor keep a read model that skipped what the
next owner wrote (an agent created then would be refused on every request routed to this instance)."""

from __future__ import annotations

import hashlib
from typing import AsyncIterator

import pytest

from actors.vault import decide
from arbstr.natsserver import NatsServer
from schemas.partitions import partition_of
from schemas.vault import AgentPolicy
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.support.waiting import eventually

PARTITIONS = 4


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    config = demo_config(mock_upstream, vault=vault_section(partitions=PARTITIONS, lease_s=1.0))
    s = await start_stack(config, fresh_nats.url)
    yield s
    await s.stop()


async def test_an_owner_overtaken_while_paused_lets_go_and_reads_the_next_owners_writes(stack: Stack) -> None:
    a, b = await add_vault(stack, instances=2)
    await eventually(lambda: len(a.owners) == len(b.owners) == PARTITIONS // 2, 20, "the partitions shared out")
    held = set(a.owners)
    # A pause: no renewals, no watching (the watch would tell it the lease is gone). Its follower still runs.
    await a.ownership.freeze()
    await eventually(lambda: held <= set(b.owners), 10, "the other instance to take the partitions over")
    # The next owner's first batch (its takeover marker) is enough: the paused owner stops serving them.
    await eventually(lambda: not (held & set(a.owners)), 5, "the overtaken owner to let go")
    created = {}
    for i in range(40):
        agent_id = f"agent-{i}"
        if partition_of(agent_id, PARTITIONS) in held and len(created) < 4:
            digest = hashlib.sha256(agent_id.encode()).hexdigest()
            await b.execute(agent_id, lambda s, at, agent_id=agent_id, digest=digest: decide.create_agent(
                s, agent_id, digest, AgentPolicy(), at))
            created[agent_id] = digest
    assert len(created) == 4
    # Its read model of those partitions is the journal's (read afresh), with what was written after the takeover.
    await eventually(lambda: all(a.book.agent_by_token(digest) == agent_id for agent_id, digest in created.items()),
                     10, "the overtaken owner's read model to know the agents created since")
