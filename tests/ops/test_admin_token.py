"""One rule for the admin token, for `arbstr up`, its components and the operator CLI: the environment wins,
else the config, else the data dir's ``admin-token`` file; `arbstr up` writes the one it settled on there."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from actors.runtime import admin_token_hash, token_hash
from arbstr.admin_token import ENV, find_admin_token, settle_admin_token, token_file
from schemas.config import parse_config
from tests.support.stack import ADMIN_TOKEN, Stack, vault_section


def paid_config(token: str | None):  # type: ignore[no-untyped-def]
    vault = vault_section()
    if token is None:
        vault.pop("admin_token")
    else:
        vault["admin_token"] = token
    return parse_config({"vault": vault})


def test_the_environment_wins_then_the_config_then_the_data_dir(tmp_path: Path) -> None:
    token_file(tmp_path).write_text("from-file\n")
    assert find_admin_token(paid_config("from-config"), tmp_path, {ENV: "from-env"}) == ("from-env", "environment")
    assert find_admin_token(paid_config("from-config"), tmp_path, {}) == ("from-config", "config")
    assert find_admin_token(paid_config(None), tmp_path, {}) == ("from-file", "data dir")
    assert find_admin_token(None, tmp_path / "nowhere", {}) == (None, "")


def test_up_writes_the_token_it_settled_on(tmp_path: Path) -> None:
    # `arbstr up --config` with a token in the config: the data dir's file gets it (the CLI finds it there).
    assert settle_admin_token(paid_config("from-config"), tmp_path, {}) == "from-config"
    assert token_file(tmp_path).read_text().strip() == "from-config"
    assert stat.S_IMODE(token_file(tmp_path).stat().st_mode) == 0o600
    # The environment wins over both, and replaces the file's.
    assert settle_admin_token(paid_config("from-config"), tmp_path, {ENV: "from-env"}) == "from-env"
    assert token_file(tmp_path).read_text().strip() == "from-env"
    # Nothing anywhere: a new one, kept for the next run.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    made = settle_admin_token(paid_config(None), fresh, {})
    assert made.startswith("adm_") and settle_admin_token(paid_config(None), fresh, {}) == made


def test_components_follow_the_same_rule(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(ENV, "from-env")
    assert admin_token_hash(paid_config("from-config")) == token_hash("from-env")
    monkeypatch.delenv(ENV)
    assert admin_token_hash(paid_config("from-config")) == token_hash("from-config")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.run([sys.executable, "-m", "arbstr", *args], capture_output=True, text=True, timeout=30,
                          env={**clean, **env})


async def test_the_operator_cli_finds_the_token_the_same_way(paid_stack: Stack, tmp_path: Path) -> None:
    import asyncio

    # What `arbstr up --config` leaves behind: the config's token in the data dir's file.
    settle_admin_token(paid_config(ADMIN_TOKEN), tmp_path, {})
    out = await asyncio.to_thread(cli, "agent", "list", "--url", paid_stack.url, "--data-dir", str(tmp_path), env={})
    assert out.returncode == 0, out.stderr
    # The config's token, given the config.
    cfg = tmp_path / "arbstr.toml"
    cfg.write_text(f'[vault]\nadmin_token = "{ADMIN_TOKEN}"\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    out = await asyncio.to_thread(cli, "agent", "list", "--url", paid_stack.url, "--config", str(cfg),
                                  "--data-dir", str(empty), env={})
    assert out.returncode == 0, out.stderr
    # The environment wins over the config and the file (here: a wrong token, refused).
    out = await asyncio.to_thread(cli, "agent", "list", "--url", paid_stack.url, "--config", str(cfg),
                                  "--data-dir", str(tmp_path), env={ENV: "not-the-token"})
    assert out.returncode != 0 and "401" in out.stderr
    out = await asyncio.to_thread(cli, "agent", "list", "--url", paid_stack.url, "--data-dir", str(empty), env={})
    assert out.returncode != 0 and "no admin token" in out.stderr
