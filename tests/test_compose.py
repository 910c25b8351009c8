"""compose.yaml agrees with the CLI and the config: services, commands, ports, env vars."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from arbstr.components import COMPONENTS
from schemas.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_every_component_is_a_service_running_arbstr() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    runs = {}
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if svc.get("image") == "arbstr:latest":
            assert cmd[:1] == ["run"], name
            assert cmd[1] in COMPONENTS, (name, cmd)
            assert cmd[cmd.index("--config") + 1] == "/etc/arbstr/arbstr.toml"
            assert "./deploy/arbstr.toml:/etc/arbstr/arbstr.toml:ro" in svc["volumes"]
            assert svc["env_file"] == ".env"
            runs[cmd[1]] = name
    assert set(runs) == set(COMPONENTS)
    for node in ("nats-1", "nats-2", "nats-3"):
        assert node in services and "healthcheck" in services[node]
    assert "lnd" in services and "mint" in services


def test_config_loads_with_the_example_env_and_matches_the_services() -> None:
    config = load_config(ROOT / "deploy" / "arbstr.toml", env=env_example())
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    gateway = compose["services"]["gateway"]
    cmd = gateway["command"]
    port = int(cmd[cmd.index("--port") + 1])
    assert config.server.port == port
    assert f"{port}:{port}" in gateway["ports"]
    for url in config.nats.url.split(","):
        host = re.match(r"nats://([^:]+):4222", url.strip())
        assert host and host.group(1) in compose["services"]
    assert config.vault is not None and config.vault.replicas == 3


def test_every_variable_compose_uses_is_documented() -> None:
    text = (ROOT / "compose.yaml").read_text() + (ROOT / "deploy" / "arbstr.toml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= set(env_example()), used - set(env_example())
    nats_conf = (ROOT / "deploy" / "nats.conf").read_text()
    assert "sync_interval: always" in nats_conf and "routes" in nats_conf


def test_nats_conf_is_valid_for_the_shipped_server() -> None:
    import os
    import subprocess

    from arbstr.natsserver import nats_server_binary

    out = subprocess.run([nats_server_binary(), "-c", str(ROOT / "deploy" / "nats.conf"), "-t"],
                         capture_output=True, text=True, env={**os.environ, "NATS_NAME": "nats-1"}, timeout=20)
    assert out.returncode == 0 and "is valid" in out.stdout + out.stderr, out.stderr


def test_the_example_config_loads_and_its_wallet_sections_are_valid_when_uncommented(tmp_path: Path) -> None:
    import re

    text = (ROOT / "arbstr.example.toml").read_text()
    env = {name: "https://x.example" if "URL" in name else "ab" * 20
           for name in set(re.findall(r"\$\{([A-Z_]+)\}", text))}
    config = load_config(ROOT / "arbstr.example.toml", env=env)
    assert config.vault is not None and config.vault.wallet.kind == "simulated"
    # The commented rails, switched on as an operator would: kind = "auto" with both sections and top-ups.
    live = text.replace('kind = "simulated"  ', 'kind = "auto"       ')
    for section in ("[vault.wallet.lnd]", "[vault.wallet.cashu]", "[vault.topup]"):
        start = live.index(f"# {section}")
        end = live.index("\n\n", start)
        block = "\n".join(re.sub(r"^# (?=[a-z_\[])", "", line) for line in live[start:end].splitlines())
        live = live[:start] + block + live[end:]
    path = tmp_path / "example-live.toml"
    path.write_text(live)
    config = load_config(path, env=env)
    assert config.vault is not None and config.vault.topup is not None
    wallet = config.vault.wallet
    assert (wallet.kind, wallet.lnd is not None, wallet.cashu is not None) == ("auto", True, True)
