"""The dashboard in a real headless Chromium, driven over the Chrome DevTools Protocol: an approval shown in
the page is approved by a click, the waiting request completes, the books show balanced and the spend event
arrives live."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.stack import ADMIN_TOKEN, Stack, demo_config, start_stack
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent, settled

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts/, as the README says
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1500", "--remote-debugging-port=0"]


class CDP:
    """A minimal Chrome DevTools Protocol client on one page target: commands by id, exceptions collected."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exceptions: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))

    async def send(self, method: str, params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params or {}})
        reply = await asyncio.wait_for(fut, 15)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 15.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting in the page for: {expression}; "
                                     f"page errors: {self.exceptions}")
            await asyncio.sleep(0.1)


async def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    port_file = profile / "DevToolsActivePort"
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("chromium wrote no DevToolsActivePort")
        await asyncio.sleep(0.05)
    return int(port_file.read_text().splitlines()[0])


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[CDP]:
    if CHROMIUM is None:
        # CI installs it (.ci/run, Debian's package): there a missing browser is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium binary is on PATH: .ci/run must install Debian's 'chromium'")
        pytest.skip("no chromium binary on PATH (Debian package 'chromium'): the dashboard browser test needs it")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = await _devtools_port(profile, proc)
        async with aiohttp.ClientSession() as session:
            targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.send("Runtime.enable")
                await cdp.send("Page.enable")
                yield cdp
                cdp.reader.cancel()
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


@pytest.fixture
def stack(paid_stack: Stack) -> Stack:
    return paid_stack


async def test_dashboard_page_is_self_contained_and_holds_no_secret(http: aiohttp.ClientSession,
                                                                     stack: Stack) -> None:
    r = await http.get(f"{stack.url}/dashboard")
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    assert ADMIN_TOKEN not in html
    # The SVG namespace URI names a namespace, it is never fetched; nothing else may point off the gateway.
    rest = html.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in rest and "https://" not in rest
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]


async def test_dashboard_is_paid_mode_only(http: aiohttp.ClientSession, fresh_nats: NatsServer,
                                           mock_upstream: str) -> None:
    free = await start_stack(demo_config(mock_upstream), fresh_nats.url)
    try:
        r = await http.get(f"{free.url}/dashboard")
        assert r.status == 404
    finally:
        await free.stop()


async def test_approve_in_the_browser(http: aiohttp.ClientSession, stack: Stack, page: CDP) -> None:
    agent_id, token = await new_agent(http, stack, "needs-ok", deposit_msat=1_000_000,
                                      policy={"approval_over_msat": 100, "approval_timeout_s": 60})
    await page.send("Page.navigate", {"url": f"{stack.url}/dashboard"})
    await page.wait_for("document.readyState === 'complete' && !!document.getElementById('token')")
    await page.eval(f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)}; "
                    "document.getElementById('login-button').click(); true")
    await page.wait_for("document.body.dataset.loaded === 'true'")
    await page.wait_for("document.getElementById('events').dataset.connected === 'true'")
    assert await page.eval("sessionStorage.getItem('arbstr.admin_token')") == ADMIN_TOKEN
    assert await page.eval("localStorage.length") == 0
    assert await page.eval("document.querySelectorAll('#breaker-table tr[data-breaker=\"closed\"]').length") == 3

    rid = "dash-approve-1"
    waiting = asyncio.create_task(http.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50},
        headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid}))
    button = f"#approval-table button.approve[data-request-id=\"{rid}\"]"
    await page.wait_for(f"!!document.querySelector({json.dumps(button)})", timeout_s=20)
    assert not waiting.done()
    await page.eval(f"document.querySelector({json.dumps(button)}).click(); true")
    r = await asyncio.wait_for(waiting, 20)
    assert r.status == 200, await r.text()

    event = f"#events .event[data-request-id=\"{rid}\"][data-kind=\"settled\"]"
    await page.wait_for(f"!!document.querySelector({json.dumps(event)})")
    await settled(http, stack, agent_id)
    final = await books(http, stack)
    assert_balanced(final)
    assert final["pending_msat"] == 0 and final["spent_msat"] > 0
    await page.wait_for("!document.querySelector('#approval-table tr[data-request-id]')")
    await page.wait_for("document.getElementById('books-state').dataset.balanced === 'true'")
    # The figures, not only the verdict: the panel shows what the books say once the live event said settled.
    for field in ("deposits_msat", "balances_msat", "pending_msat", "spent_msat"):
        cell = f"document.querySelector('#books-table tr[data-field=\"{field}\"]')"
        await page.wait_for(f"{cell} && {cell}.dataset.msat === '{final[field]}'", timeout_s=10)
    shown = await page.eval("document.querySelector('#books-table tr[data-field=\"spent_msat\"]').textContent")
    assert f"{final['spent_msat'] / 1000:,.3f}" in shown, shown
    spent = (await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200))["spent_msat"]
    assert spent > 0
    await page.wait_for("!!document.querySelector('#chart-agents rect[data-series=\"needs-ok\"]')")
    await page.wait_for("!!document.querySelector('#chart-providers rect')")
    assert "sats saved" in await page.eval("document.getElementById('savings-total').textContent")
    assert page.exceptions == []

    shot = await page.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    ARTIFACTS.mkdir(exist_ok=True)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG")
    (ARTIFACTS / "dashboard.png").write_bytes(png)
