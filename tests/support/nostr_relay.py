"""A real Nostr relay for tests (the ``nostr-relay`` package, run by its own CLI) and a test publisher.

The relay runs in a subprocess on a loopback port with its sqlite database in a temp dir. By default it is
configured NOT to check signatures, like a careless or hostile relay: tests can then publish forged events and
prove that arbstr's client verifies every event itself.

A test module makes its own fixture (any scope) with ``yield from running_relay(tmp_path_factory)``, and
publishes with ``publish``/``publish_all`` over any aiohttp session (conftest's ``http``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import aiohttp
import pytest
import yaml
from coincurve import PrivateKey

from actors.pricing.announcements import ANNOUNCEMENT_KIND, DELETION_KIND, compute_event_id

# The relay's own CLI, run with the venv's interpreter (``nostr-relay -c CONFIG serve --use-uvicorn``):
# uvicorn alone starts in well under a second, gunicorn's worker fork adds nothing a test needs.
_RELAY_CMD = [sys.executable, "-c", "from nostr_relay.cli import main; main()"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts_websocket(port: int) -> bool:
    """A raw RFC 6455 handshake: True once the relay upgrades the connection (HTTP 101)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(request)
            return s.recv(64).startswith(b"HTTP/1.1 101")
    except OSError:
        return False


class NostrRelay:
    """One nostr-relay process; ``url`` is its ws:// address once started."""

    def __init__(self, data_dir: Path, *, verify_signatures: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.verify_signatures = verify_signatures
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        validators = ["nostr_relay.validators.is_not_too_large", "nostr_relay.validators.is_recent"]
        if self.verify_signatures:
            validators.append("nostr_relay.validators.is_signed")
        config = {
            "DEBUG": False,
            "relay_name": "arbstr test relay",
            "storage": {
                "sqlalchemy.url": f"sqlite+aiosqlite:///{self.data_dir / 'relay.sqlite3'}",
                "validators": validators,
            },
            "gunicorn": {"bind": f"127.0.0.1:{self.port}", "workers": 1, "loglevel": "warning", "reload": False},
            "authentication": {"enabled": False},
            "verification": {"nip05_verification": "disabled"},
            "logging": {"version": 1, "root": {"level": "WARNING"}},
        }
        path = self.data_dir / "relay.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, timeout_s: float = 20.0, attempts: int = 3) -> "NostrRelay":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            # The port is picked before the relay binds it: another process may take it in between, so a relay
            # that exits at once is retried on a new port.
            self.port = _free_port()
            config = self._write_config()
            with open(self.data_dir / "relay.log", "ab") as log:
                self.proc = subprocess.Popen([*_RELAY_CMD, "-c", str(config), "serve", "--use-uvicorn"],
                                             cwd=self.data_dir, stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _accepts_websocket(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"nostr-relay did not start: see {self.data_dir / 'relay.log'}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Signer:
    """A test Nostr identity: BIP-340 signatures with coincurve over the NIP-01 event id."""

    def __init__(self, name: str) -> None:
        # Derived from a name so every test has its own identity and its events never mix with another's.
        self.key = PrivateKey(hashlib.sha256(f"arbstr-nostr-test:{name}".encode()).digest())
        self.pubkey = self.key.public_key_xonly.format().hex()

    def sign(self, kind: int, tags: list[list[str]], content: str = "", created_at: Optional[int] = None
             ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "pubkey": self.pubkey,
            "created_at": int(time.time()) if created_at is None else created_at,
            "kind": kind,
            "tags": tags,
            "content": content,
        }
        ev["id"] = compute_event_id(ev)
        ev["sig"] = self.key.sign_schnorr(bytes.fromhex(ev["id"]), os.urandom(32)).hex()
        return ev

    def announcement(self, d: str, url: str, *, mints: tuple[str, ...] = ("https://mint.example",),
                     version: str = "0.2.1", created_at: Optional[int] = None,
                     expiration: Optional[int] = None, extra_urls: tuple[str, ...] = ()) -> dict[str, Any]:
        """A kind 38421 event shaped as routstr-core publishes it (d, u..., mint..., version, JSON content)."""
        tags = [["d", d], ["u", url], *(["u", u] for u in extra_urls), *(["mint", m] for m in mints)]
        tags.append(["version", version])
        if expiration is not None:
            tags.append(["expiration", str(expiration)])
        content = json.dumps({"name": f"test node {d}", "about": "arbstr test"}, separators=(",", ":"))
        return self.sign(ANNOUNCEMENT_KIND, tags, content, created_at)

    def deletion(self, *, event_ids: tuple[str, ...] = (), d_tags: tuple[str, ...] = (),
                 created_at: Optional[int] = None) -> dict[str, Any]:
        """A NIP-09 deletion request of event ids (``e``) and/or announcement coordinates (``a``)."""
        tags = [["e", i] for i in event_ids]
        tags += [["a", f"{ANNOUNCEMENT_KIND}:{self.pubkey}:{d}"] for d in d_tags]
        tags.append(["k", str(ANNOUNCEMENT_KIND)])
        return self.sign(DELETION_KIND, tags, "node retired", created_at)


async def publish(session: aiohttp.ClientSession, relay_url: str, event: dict[str, Any],
                  timeout_s: float = 5.0) -> tuple[bool, str]:
    """Send ``["EVENT", event]`` and wait for the relay's ``["OK", id, accepted, message]`` (NIP-01/NIP-20)."""
    async with asyncio.timeout(timeout_s):
        async with session.ws_connect(relay_url) as ws:
            await ws.send_str(json.dumps(["EVENT", event]))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if data[0] == "OK" and data[1] == event["id"]:
                    return bool(data[2]), str(data[3]) if len(data) > 3 else ""
    raise RuntimeError("relay closed without OK")


async def publish_all(session: aiohttp.ClientSession, relay_url: str, *events: dict[str, Any]) -> None:
    """Publish in order and insist the relay stored each one."""
    for ev in events:
        accepted, message = await publish(session, relay_url, ev)
        assert accepted, f"relay refused event {ev['id']}: {message}"


def running_relay(tmp_path_factory: pytest.TempPathFactory, name: str = "nostr-relay") -> Iterator[NostrRelay]:
    """The body of a relay fixture: ``yield from running_relay(tmp_path_factory)`` in a module's own fixture."""
    relay = NostrRelay(tmp_path_factory.mktemp(name)).start()
    try:
        yield relay
    finally:
        relay.stop()
