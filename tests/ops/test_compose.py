"""compose.yaml agrees with the CLI and the config: services, commands, ports, env vars."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from arbstr.components import COMPONENTS
from schemas.config import load_config

ROOT = Path(__file__).resolve().parents[2]


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!override, !reset) read as the plain values they carry."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!override", "!reset"):
    ComposeLoader.add_constructor(_tag, _plain)


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
        if svc.get("image") == "arbstr:latest" and "profiles" not in svc:
            assert cmd[:1] == ["run"], name
            assert cmd[1] in COMPONENTS, (name, cmd)
            assert cmd[cmd.index("--config") + 1] == "/etc/arbstr/arbstr.toml"
            assert "./deploy/arbstr.toml:/etc/arbstr/arbstr.toml:ro" in svc["volumes"]
            assert svc["env_file"] == ".env"
            runs[cmd[1]] = name
            # Its own bus credential and nobody else's.
            assert svc["secrets"] == [{"source": f"{cmd[1]}_nkey", "target": f"{cmd[1]}.nk"}], name
            assert svc["environment"]["ARBSTR_NATS_CREDS"] == f"/run/secrets/{cmd[1]}.nk"
            assert compose["secrets"][f"{cmd[1]}_nkey"]["file"] == f"./deploy/bus/{cmd[1]}.nk"
    assert set(runs) == set(COMPONENTS)
    for node in ("nats-1", "nats-2", "nats-3"):
        assert node in services and "healthcheck" in services[node]
        assert "./deploy/bus/nats-auth.conf:/etc/nats/bus/nats-auth.conf:ro" in services[node]["volumes"]
    assert {"lnd", "lnd-mint", "mint", "bitcoind"} <= set(services)
    init = services["bus-init"]
    assert init["profiles"] == ["init"] and init["command"][:2] == ["bus", "init"]


def test_the_deployment_runs_the_real_rails_and_the_tested_mint() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    pinned = re.search(r'"cashu==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and services["mint"]["image"] == f"cashubtc/nutshell:{pinned.group(1)}"
    assert services["mint"]["environment"]["MINT_BACKEND_BOLT11_SAT"] != "FakeWallet"
    lnd_args = services["lnd"]["command"]
    assert "--bitcoin.node=bitcoind" in lnd_args and not any("neutrino" in a for a in lnd_args)
    config = load_config(ROOT / "deploy" / "arbstr.toml", env=env_example())
    assert config.vault is not None and config.vault.wallet.kind == "auto"
    assert config.vault.wallet.lnd is not None and config.vault.wallet.cashu is not None
    simulated = load_config(ROOT / "deploy" / "arbstr.simulated.toml", env=env_example())
    assert simulated.vault is not None and simulated.vault.wallet.kind == "simulated"
    override = yaml.load((ROOT / "compose.simulated.yaml").read_text(), Loader=ComposeLoader)
    assert "./deploy/arbstr.simulated.toml:/etc/arbstr/arbstr.toml:ro" in override["services"]["vault"]["volumes"]


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


def test_nats_conf_is_valid_for_the_shipped_server_with_the_bus_files(tmp_path: Path) -> None:
    """deploy/nats.conf with what `arbstr bus init` writes beside it: valid, authenticated, routes authenticated."""
    import os
    import shutil
    import subprocess
    import sys

    from arbstr.natsserver import nats_server_binary

    shutil.copy(ROOT / "deploy" / "nats.conf", tmp_path / "nats.conf")
    init = subprocess.run([sys.executable, "-m", "arbstr", "bus", "init", str(tmp_path / "bus"), "--routes",
                           "nats-1:6222,nats-2:6222,nats-3:6222"], capture_output=True, text=True, timeout=30)
    assert init.returncode == 0, init.stderr
    auth = (tmp_path / "bus" / "nats-auth.conf").read_text()
    cluster = (tmp_path / "bus" / "nats-cluster.conf").read_text()
    assert "no_auth_user" not in auth and "nkey" in auth
    assert "authorization" in cluster and "nats://route:" in cluster
    out = subprocess.run([nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "-t"],
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


def test_each_vault_replica_keeps_its_projection_in_a_file_of_its_own() -> None:
    # In memory, every restart replays the whole history into DuckDB (minutes after a million requests); on a
    # volume shared by `--scale vault=N` replicas the one-writer file would be fought over.
    for name in ("arbstr.toml", "arbstr.simulated.toml"):
        text = (ROOT / "deploy" / name).read_text()
        path = re.search(r'^duckdb_path = "(.+)"$', text, re.M)
        assert path and path.group(1).startswith("/var/lib/arbstr/"), name
    assert "mkdir -p /var/lib/arbstr && chown nobody /var/lib/arbstr" in (ROOT / "Dockerfile").read_text()
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert not any("/var/lib/arbstr" in str(v) for v in compose["services"]["vault"].get("volumes", []))
