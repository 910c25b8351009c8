"""Which partition of the ledger an agent's account lives in: the one rule every part must compute alike.

The vault splits accounts into a fixed number of partitions (fixed when the ledger is created, recorded in the
``arbstr_vault`` bucket's ``layout`` key); each partition has one owning vault instance at a time, and the
gateway sends an agent's reserve and settle straight to its partition's owner.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

MAX_PARTITIONS = 1024
MAX_LEDGER_STREAMS = 8


# Asked several times per command (routing, the write path, the read model): a sha256 each time showed in the
# vault's profile. Pure, so remembered for the agents seen lately.
@lru_cache(maxsize=65536)
def partition_of(agent_id: str, partitions: int) -> int:
    """A stable spread of agent ids over ``partitions`` (sha256, so it is the same in every process)."""
    digest = hashlib.sha256(agent_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def stream_of(partition: int, streams: int) -> int:
    """The ledger stream a partition's journal lives in: partitions spread round-robin over the streams."""
    return partition % streams
