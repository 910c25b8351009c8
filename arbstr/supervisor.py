"""``arbstr up``: an embedded nats-server plus one OS process per component, restarted when one crashes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from actors.runtime.connection import ENV_CREDS
from schemas.config import Config

from .bus_auth import BusCredentials, private_dir
from .components import COMPONENTS
from .natsserver import NatsServer

log = logging.getLogger("arbstr.up")

MAX_BACKOFF_S = 10.0


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: Optional[subprocess.Popen[bytes]] = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = 0.5
    next_start: float = field(default=0.0)
    env: Optional[dict[str, str]] = None

    def start(self) -> None:
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=self.env)
        out.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def component_args(component: str, config_path: Path, nats_url: str) -> list[str]:
    return [sys.executable, "-m", "arbstr", "run", component, "--config", str(config_path), "--nats", nats_url]


def wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


class Supervisor:
    def __init__(self, config: Config, config_path: Path, data_dir: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.data_dir = data_dir
        self.children: list[Child] = []
        self.nats: Optional[NatsServer] = None
        self.bus: Optional[BusCredentials] = None
        self._stopping = False

    def start(self) -> str:
        private_dir(self.data_dir)  # seeds, the admin token, the journal: the operator's eyes only
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # The bus is authenticated: every component gets its own identity, and nothing else connects.
        self.bus = BusCredentials.ensure(self.data_dir / "bus")
        self.nats = NatsServer(self.data_dir / "nats", sync_always=True, log_file=logs / "nats-server.log",
                               authorization=self.bus.authorization_conf())
        self.nats.start()
        log.info("nats-server (JetStream, authenticated) on %s", self.nats.url)
        (self.data_dir / "nats-url").write_text(self.nats.url + "\n")  # for `arbstr events` and other tools
        order = []
        if self.config.mock_upstream is not None:
            m = self.config.mock_upstream
            order.append(("mock-upstream", [sys.executable, "-m", "arbstr", "mock-upstream", "--host", m.host,
                                            "--port", str(m.port), "--latency-ms", str(m.latency_ms),
                                            "--chunk-delay-ms", str(m.chunk_delay_ms)]))
        actors = ["pricing", "breaker", "router"] + (["vault"] if self.config.vault is not None else [])
        for comp in [*actors, "gateway"]:
            args = component_args(comp, self.config_path, self.nats.url)
            if comp == "gateway":
                args += ["--host", self.config.server.host, "--port", str(self.config.server.port)]
            order.append((comp, args))
        for name, args in order:
            # Each component is handed its own credential only (by path, never on the command line).
            env = {**os.environ, ENV_CREDS: str(self.bus.path(name))} if name in COMPONENTS else None
            child = Child(name, args, logs / f"{name}.log", env=env)
            child.start()
            self.children.append(child)
        url = f"http://{self.config.server.host}:{self.config.server.port}"
        if not wait_http(url + "/ready", 30):
            raise RuntimeError(f"the gateway did not become ready; see the logs in {logs}")
        return url

    def watch(self) -> None:
        """Restart crashed children with exponential back-off until asked to stop."""
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                if child.alive() or self._stopping:
                    continue
                if child.next_start == 0.0:
                    code = child.proc.returncode if child.proc else None
                    if now - child.started_at > 30:
                        child.backoff_s = 0.5
                    child.next_start = now + child.backoff_s
                    log.warning("%s exited (%s); restarting in %.1fs", child.name, code, child.backoff_s)
                    child.backoff_s = min(MAX_BACKOFF_S, child.backoff_s * 2)
                elif now >= child.next_start:
                    child.restarts += 1
                    child.next_start = 0.0
                    child.start()
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopping = True
        for child in reversed(self.children):
            child.stop()
        if self.nats is not None:
            self.nats.stop()


def install_signal_handlers(sup: Supervisor) -> None:
    def handler(signum: int, frame: object) -> None:
        sup._stopping = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
