"""Two router processes share the load; SIGKILL one mid-traffic and no request is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.stack import demo_config, start_stack

pytestmark = pytest.mark.slow


async def test_router_instances_share_load_and_survive_a_kill(nats_url: str, mock_upstream: str,
                                                               tmp_path: Path) -> None:
    config = demo_config(mock_upstream)
    stack = await start_stack(config, nats_url, routers=0)
    cfg_path = tmp_path / "arbstr.toml"
    cfg_path.write_text("[nats]\nrequest_timeout_s = 2.0\n" + "\n".join(
        f'[[providers]]\nname = "{p.name}"\nurl = "{p.url}"\nmodels = {p.models!r}\n'.replace("'", '"')
        + f"input_rate = {p.input_rate}\noutput_rate = {p.output_rate}\ntier = \"{p.tier}\"\n"
        for p in config.providers))
    procs = [subprocess.Popen([sys.executable, "-m", "arbstr", "run", "router", "--config", str(cfg_path),
                               "--nats", nats_url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    try:
        async with aiohttp.ClientSession() as http:
            async def one(i: int) -> int:
                r = await http.post(f"{stack.url}/v1/chat/completions",
                                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})
                await r.read()
                return r.status

            # both up: wait until both answer
            for _ in range(100):
                if (await one(-1)) == 200:
                    break
                await asyncio.sleep(0.1)
            for _ in range(100):  # the second process may take a moment longer to subscribe
                if len(await router_stats(stack.nc)) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(await router_stats(stack.nc)) == 2
            statuses = await asyncio.gather(*(one(i) for i in range(200)))
            assert statuses.count(200) == 200
            stats = await router_stats(stack.nc)
            assert all(n > 0 for n in stats.values()), stats  # the queue group spread the load

            async def kill_soon() -> None:
                await asyncio.sleep(0.05)
                os.kill(procs[0].pid, signal.SIGKILL)

            results = await asyncio.gather(kill_soon(), *(one(i) for i in range(300)))
            assert list(results[1:]).count(200) == 300
            statuses = await asyncio.gather(*(one(i) for i in range(50)))
            assert statuses.count(200) == 50
    finally:
        for p in procs:
            p.kill()
            p.wait()
        await stack.stop()


async def router_stats(nc) -> dict[str, int]:
    """Requests handled per router instance, from nats micro STATS (schema-valid replies)."""
    import json

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.STATS.arbstr-router", b"", reply=inbox)
    out: dict[str, int] = {}
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            data = json.loads(msg.data)
            out[data["id"]] = sum(e["num_requests"] for e in data["endpoints"])
    except Exception:
        pass
    await sub.unsubscribe()
    return out
