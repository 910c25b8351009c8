"""Shared fixtures: a real nats-server (random port, JetStream in a temp dir) for the whole session."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from arbstr.natsserver import NatsServer

# The harness's fixtures, registered here once so they are the same fixture everywhere: a session fixture imported
# into a test module would be that module's own and start once per importing module (one Nutshell mint each).
from tests.support.market_servers import market  # noqa: F401,E402 (fixture)
from tests.support.nutshell import nutshell_mint, outside  # noqa: F401,E402 (fixtures)
from tests.support.routstr_node import routstr_nodes  # noqa: F401,E402 (fixture)

# Before pytest-timeout's 120 s: say what every task awaits while the loop still answers.
HANG_REPORT_S = float(os.environ.get("ARBSTR_HANG_REPORT_S", "90"))
_running: dict[str, Any] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Iterator[None]:
    _running.update(nodeid=item.nodeid, since=time.monotonic(), reported=False)
    yield
    _running.clear()


def _report_tasks(nodeid: str) -> None:
    print(f"\n=== {nodeid} still running after {HANG_REPORT_S:.0f} s; asyncio tasks: ===", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


@pytest.fixture(scope="session", autouse=True)
async def hang_reporter() -> AsyncIterator[None]:
    """A test or teardown that hangs in CI shows the awaits it is stuck on, not only an idle selector."""
    loop = asyncio.get_running_loop()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(2.0):
            since, nodeid = _running.get("since"), _running.get("nodeid")
            if since is not None and not _running.get("reported") and time.monotonic() - since > HANG_REPORT_S:
                _running["reported"] = True
                loop.call_soon_threadsafe(_report_tasks, nodeid)

    thread = threading.Thread(target=watch, name="hang-reporter", daemon=True)
    thread.start()
    yield
    done.set()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bus_violations_expected(pattern=None): the test provokes NATS permission "
                                       "violations (only those matching the regex pattern, when given)")


@pytest.fixture(autouse=True)
def no_permission_violations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every component the harness starts runs under its own bus identity; a subject it needs and may not touch
    shows in the server's log as a violation, and fails the test that caused it."""
    from tests.support import bus

    before = bus.log_sizes()
    yield
    marker = request.node.get_closest_marker("bus_violations_expected")
    if marker is not None and not marker.args:
        return
    found = bus.violations_since(before)
    if marker is not None:
        allowed = re.compile(marker.args[0])
        found = [line for line in found if not allowed.search(line)]
    assert not found, "NATS permission violations:\n" + "\n".join(found[:20])


def _start_authenticated(store: Path, **kwargs: Any) -> NatsServer:
    from tests.support import bus

    server = bus.authenticated_server(store, log_file=Path(store) / "nats.log", **kwargs)
    server.start()
    bus.register(server.url, server.credentials, Path(store) / "nats.log")  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = _start_authenticated(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator["object"]:
    import nats

    conn = await nats.connect(nats_url)
    yield conn
    await conn.drain()


@pytest.fixture(scope="session")
async def mock_upstream() -> AsyncIterator[str]:
    """The project's mock OpenAI-compatible upstream on a random loopback port; yields its base URL."""
    from aiohttp import web

    from arbstr.mock_upstream import build_app

    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator["object"]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own: streams and buckets start empty (fsync before ack, as in production)."""
    server = _start_authenticated(tmp_path / "nats", sync_always=True)
    yield server
    server.stop(kill=True)


@pytest.fixture
async def hosts(fresh_nats: NatsServer) -> AsyncIterator["object"]:
    """Actors on their own connections to this test's own nats-server; stopped at teardown."""
    from tests.support.hosts import Hosts

    h = Hosts(fresh_nats.url)
    yield h
    await h.stop_all()


@pytest.fixture
async def client(fresh_nats: NatsServer) -> AsyncIterator["object"]:
    import nats

    conn = await nats.connect(fresh_nats.url)
    yield conn
    await conn.drain()


@pytest.fixture
async def paid_stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator["object"]:
    """The demo stack in paid mode (one vault instance) on a fresh server."""
    from tests.support.stack import add_vault, demo_config, start_stack, vault_section

    s = await start_stack(demo_config(mock_upstream, vault=vault_section()), fresh_nats.url)
    await add_vault(s)
    yield s
    await s.stop()
