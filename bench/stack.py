"""Brings up a whole arbstr stack as separate OS processes for the benchmarks (as `arbstr up` would)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from arbstr.bus_auth import BusCredentials
from arbstr.demo import demo_toml, free_port
from arbstr.natsserver import NatsServer
from arbstr.supervisor import wait_http


class BenchStack:
    def __init__(self, workdir: Path, gateway_url: str, mock_url: str, nats: NatsServer,
                 procs: list[subprocess.Popen[bytes]], admin_token: str = "",
                 bus: Optional[BusCredentials] = None, names: Optional[list[str]] = None,
                 monitor_url: str = "") -> None:
        self.workdir = workdir
        self.gateway_url = gateway_url
        self.mock_url = mock_url
        self.nats = nats
        self.procs = procs
        self.admin_token = admin_token
        self.bus = bus
        self.names = names or []  # the component each of ``procs`` runs (mock-upstream first)
        self.monitor_url = monitor_url  # the nats-server's monitoring endpoint (/varz: messages in and out)

    def bus_messages(self) -> tuple[int, int]:
        """Messages the nats-server has received from clients and delivered to them so far (its /varz)."""
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=5) as r:
            varz = json.load(r)
        return int(varz["in_msgs"]), int(varz["out_msgs"])

    def arbstr_pids_by_name(self) -> dict[str, int]:
        """arbstr's own processes and the nats-server by name: what a request costs in CPU (not the mock, not the
        client)."""
        named = {name: p.pid for p, name in zip(self.procs, self.names) if name != "mock-upstream"}
        if self.nats.proc is not None:
            named["nats-server"] = self.nats.proc.pid
        return named

    def connect_options(self, identity: str = "operator") -> dict[str, object]:
        from schemas.bus_permissions import inbox_prefix

        if self.bus is None:
            return {}
        return {"nkeys_seed_str": self.bus.seed(identity), "inbox_prefix": inbox_prefix(identity)}

    def create_agent(self, name: str, deposit_msat: int) -> str:
        """A funded agent; returns its bearer token."""
        from arbstr.demo import ensure_demo_agent

        folder = self.workdir / f"agent-{name}"
        folder.mkdir(exist_ok=True)
        return ensure_demo_agent(self.gateway_url, folder, self.admin_token, name, deposit_msat)["token"]


@contextmanager
def bench_stack(paid: bool = False, components: Optional[list[str]] = None,
                sync_always: bool = True, grants: bool = True, projection_file: bool = False) -> Iterator[BenchStack]:
    with tempfile.TemporaryDirectory(prefix="arbstr-bench-") as tmp:
        work = Path(tmp)
        gw_port, mock_port, monitor_port = free_port(), free_port(), free_port()
        cfg = work / "arbstr.toml"
        admin = "adm_" + secrets.token_urlsafe(32) if paid else ""
        projection = str(work / "vault-projection.duckdb") if projection_file else ""  # as `arbstr up` keeps it
        cfg.write_text(demo_toml(gw_port, mock_port, admin_token=admin, duckdb_path=projection)
                       + ("" if grants or not paid else "\n[vault.grants]\nenabled = false\n"))
        bus = BusCredentials.ensure(work / "bus")  # the bus as `arbstr up` runs it: every part its own identity
        nats = NatsServer(work / "nats", sync_always=sync_always, authorization=bus.authorization_conf(),
                          extra_args=["-m", str(monitor_port)]).start()
        logs = open(work / "components.log", "ab")
        py = sys.executable
        procs = [subprocess.Popen([py, "-m", "arbstr", "mock-upstream", "--port", str(mock_port)],
                                  stdout=logs, stderr=logs)]
        names = ["mock-upstream"]
        for comp in components or ["pricing", "breaker", "router", *(["vault"] if paid else []), "gateway"]:
            env = {**os.environ, "ARBSTR_NATS_CREDS": str(bus.path(comp))}
            procs.append(subprocess.Popen([py, "-m", "arbstr", "run", comp, "--config", str(cfg), "--nats", nats.url],
                                          stdout=logs, stderr=logs, env=env))
            names.append(comp)
        try:
            gw = f"http://127.0.0.1:{gw_port}"
            if not wait_http(gw + "/ready", 30):
                raise RuntimeError(f"stack did not become ready; see {work / 'components.log'}")
            time.sleep(0.3)
            yield BenchStack(work, gw, f"http://127.0.0.1:{mock_port}", nats, procs, admin, bus, names,
                             monitor_url=f"http://127.0.0.1:{monitor_port}")
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
            nats.stop()
            logs.close()
