"""The command line against real processes: `arbstr up` end to end, and the operator commands."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from arbstr.demo import free_port
from tests.support.stack import ADMIN_TOKEN, Stack


def arbstr(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arbstr", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def stack(paid_stack: Stack) -> Stack:
    return paid_stack


def run_json(stack: Stack, *args: str) -> Any:
    # Run the CLI in a thread: the stack serves on this test's event loop.
    out = arbstr(*args, "--url", stack.url, "--admin-token", ADMIN_TOKEN)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_operator_commands(stack: Stack) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    created = await loop.run_in_executor(None, run_json, stack, "agent", "create", "cli-bot", "--max-tx-msat", "5000")
    assert created["token"].startswith("arb_") and created["policy"]["max_tx_msat"] == 5000
    agent_id = created["agent_id"]
    acct = await loop.run_in_executor(None, run_json, stack, "agent", "deposit", agent_id, "7000",
                                      "--deposit-id", "d1")
    assert acct["balance_msat"] == 7000
    again = await loop.run_in_executor(None, run_json, stack, "agent", "deposit", agent_id, "7000",
                                       "--deposit-id", "d1")
    assert again["balance_msat"] == 7000  # same deposit id: credited once
    acct = await loop.run_in_executor(None, run_json, stack, "agent", "policy", agent_id, "--daily-limit-msat", "9")
    assert acct["policy"]["daily_limit_msat"] == 9 and acct["policy"]["max_tx_msat"] == 5000
    listed = await loop.run_in_executor(None, run_json, stack, "agent", "list")
    assert agent_id in {a["agent_id"] for a in listed}
    rotated = await loop.run_in_executor(None, run_json, stack, "agent", "rotate", agent_id)
    assert rotated["token"] != created["token"]
    books = await loop.run_in_executor(None, run_json, stack, "books")
    assert books["balanced"] is True and books["deposits_msat"] == 7000
    assert await loop.run_in_executor(None, run_json, stack, "approvals", "list") == []
    audit = await loop.run_in_executor(None, run_json, stack, "audit", "--verify")
    assert audit["ok"] is True


async def test_wallet_and_reconcile_commands(stack: Stack) -> None:
    import asyncio

    from actors.vault.wallets.simulated import make_invoice

    loop = asyncio.get_running_loop()

    def cli(*args: str) -> Any:
        return run_json(stack, *args)

    created = await loop.run_in_executor(None, cli, "agent", "create", "wallet-bot")
    await loop.run_in_executor(None, cli, "agent", "deposit", created["agent_id"], "50000")
    as_agent = ("--agent-token", created["token"])
    inv = await loop.run_in_executor(None, cli, "wallet", "deposit", "--amount-msat", "21000", *as_agent)
    assert (inv["status"], inv["amount_msat"]) == ("invoice", 21_000) and inv["bolt11"].startswith("lnbcrt")
    bolt11, payment_hash, _ = make_invoice(12_000)
    paid = await loop.run_in_executor(None, cli, "wallet", "withdraw", "--bolt11", bolt11, *as_agent)
    assert (paid["status"], paid["payout_id"], paid["amount_msat"]) == ("succeeded", payment_hash, 12_000)
    tok = await loop.run_in_executor(None, cli, "wallet", "withdraw", "--token-msat", "3000", "--id", "t1", *as_agent)
    assert tok["status"] == "succeeded" and tok["token"]
    mine = await loop.run_in_executor(None, cli, "wallet", "payouts", *as_agent)
    assert {p["payout_id"] for p in mine} == {payment_hash, tok["payout_id"]}
    assert (await loop.run_in_executor(None, cli, "wallet", "show", *as_agent))["balance_msat"] == 35_000
    listed = await loop.run_in_executor(None, cli, "payouts", "--agent", created["agent_id"])
    assert len(listed) == 2
    rec = await loop.run_in_executor(None, cli, "reconcile")
    assert (rec["ok"], rec["frozen"]) == (True, False)
    cleared = await loop.run_in_executor(None, cli, "reconcile", "--clear")
    assert cleared["frozen"] is False
    # The agent's commands never fall back to the admin token.
    out = arbstr("wallet", "show", "--url", stack.url, "--admin-token", ADMIN_TOKEN)
    assert out.returncode == 1 and "no agent token" in out.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nport = 8080\nbogus_key = 1\n')
    out = arbstr("run", "router", "--config", str(cfg))
    assert out.returncode == 2
    assert "unknown key 'server.bogus_key'" in out.stderr
    cfg.write_text('[[providers]]\nname = "x"\nurl = "http://h/v1"\napi_key = "${NOT_SET_ANYWHERE}"\n'
                   'input_rate = 1\noutput_rate = 1\n')
    out = arbstr("run", "router", "--config", str(cfg))
    assert out.returncode == 2 and "NOT_SET_ANYWHERE" in out.stderr


def check_the_bus_is_closed(data_dir: Path) -> None:
    """`arbstr up`'s bus: private credentials, each component handed its own, no anonymous connection, and the
    operator's `arbstr events` and the events identity work with theirs."""
    import asyncio
    import stat

    import nats

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "bus").stat().st_mode) == 0o700
    for identity in ("gateway", "router", "pricing", "breaker", "vault", "operator", "events"):
        assert stat.S_IMODE((data_dir / "bus" / f"{identity}.nk").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "nats" / "nats-server.conf").stat().st_mode) == 0o600
    url = (data_dir / "nats-url").read_text().strip()

    async def probe() -> None:
        with pytest.raises(Exception):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        nc = await nats.connect(url, nkeys_seed=str(data_dir / "bus" / "events.nk"), inbox_prefix="_INBOX.events",
                                allow_reconnect=False)
        await nc.close()

    asyncio.run(probe())
    router = subprocess.run(["pgrep", "-f", f"arbstr run router.*{data_dir}"], capture_output=True, text=True)
    env = Path(f"/proc/{router.stdout.split()[0]}/environ").read_bytes().split(b"\0")
    assert f"ARBSTR_NATS_CREDS={data_dir / 'bus' / 'router.nk'}".encode() in env  # its own, and only its own
    assert not any(b"SU" in e and b"=" in e and b"NATS" in e and b".nk" not in e for e in env)
    events = arbstr("events", "--data-dir", str(data_dir))
    assert events.returncode == 0, events.stderr


@pytest.mark.slow
def test_arbstr_up_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    # The environment's admin token wins (it used to be ignored for one `arbstr up` made itself).
    env_token = "adm_from_the_environment_0123456789"
    proc = subprocess.Popen([sys.executable, "-m", "arbstr", "up", "--data-dir", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ARBSTR_ADMIN_TOKEN": env_token})
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        token = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            m = re.search(r"token: (arb_\S+)", line)
            if m:
                token = m.group(1)
            if "Ctrl-C" in line:
                break
        assert token, "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in "".join(lines)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.headers["x-arbstr-provider"] == "alpha"  # the cheapest of 8, 10, 12 sats per 1k tokens
            body = json.loads(r.read())
            assert body["choices"][0]["message"]["content"]
        check_the_bus_is_closed(tmp_path)
        # Written to the data dir, where the operator CLI (no token given, none in its environment) finds it.
        assert (tmp_path / "admin-token").read_text().strip() == env_token
        listed = subprocess.run([sys.executable, "-m", "arbstr", "agent", "list", "--url", f"http://127.0.0.1:{port}",
                                 "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
                                env={k: v for k, v in os.environ.items() if k != "ARBSTR_ADMIN_TOKEN"})
        assert listed.returncode == 0 and "demo" in listed.stdout, listed.stderr
        # a crashed component is restarted
        children = subprocess.run(["pgrep", "-f", f"arbstr run router.*{tmp_path}"], capture_output=True, text=True)
        pids = [int(p) for p in children.stdout.split()]
        assert pids
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(2.5)
        again = subprocess.run(["pgrep", "-f", f"arbstr run router.*{tmp_path}"], capture_output=True, text=True)
        assert again.stdout.split() and int(again.stdout.split()[0]) != pids[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    left = subprocess.run(["pgrep", "-f", f"arbstr.*{tmp_path}"], capture_output=True, text=True)
    assert not left.stdout.strip(), "components left running after Ctrl-C"
