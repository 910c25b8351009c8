"""The dashboard's Approve/Deny buttons name the agent as well as the request id (issue 12): the page's own script,
run under Node with a minimal stand-in for the DOM (the full browser test in test_dashboard.py needs Chromium).
Two agents' requests sharing an id each get buttons that decide that agent's request only."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gateway.dashboard_page import PAGE

NODE = shutil.which("node")

DOM = """
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.dataset = {}; this.listeners = {};
                     this.textContent = ""; this.hidden = false; this.disabled = false; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  appendChild(c) { this.children.push(c); return c; }
  replaceChildren() { this.children = []; }
  addEventListener(type, f) { (this.listeners[type] = this.listeners[type] || []).push(f); }
}
globalThis.Node = Node;
const elements = {};
globalThis.document = {
  getElementById: (id) => elements[id] || (elements[id] = new Node("div")),
  createElement: (tag) => new Node(tag), createElementNS: (ns, tag) => new Node(tag),
  createTextNode: (text) => { const n = new Node("#text"); n.textContent = text; return n; },
  body: new Node("body"),
};
globalThis.sessionStorage = {getItem: () => null, setItem() {}, removeItem() {}};
globalThis.setInterval = () => 0;
const posted = [];
globalThis.fetch = async (path, opts) => {
  if (opts.method === "POST") posted.push(path);
  return {status: 200, ok: true, json: async () => ({data: []})};
};
"""

CLICK_EVERY_BUTTON = """
(async () => {
  const soon = Date.now() + 60000;
  renderApprovals([
    {request_id: "dup-1", agent_id: "agt_a", agent_name: "ada", model: "m", provider: "p", amount_msat: 5000,
     deadline_ms: soon},
    {request_id: "dup-1", agent_id: "agt_b", agent_name: "bob", model: "m", provider: "p", amount_msat: 7000,
     deadline_ms: soon},
  ]);
  const buttons = [];
  const walk = (n) => { if (n.tag === "button") buttons.push(n); (n.children || []).forEach(walk); };
  walk(document.getElementById("approval-table"));
  for (const b of buttons) for (const click of b.listeners.click) await click();
  console.log(JSON.stringify({posted, agents: buttons.map((b) => b.attrs["data-agent-id"])}));
})();
"""


@pytest.mark.skipif(NODE is None, reason="no node binary on PATH")
def test_each_approval_button_names_its_agent() -> None:
    script = PAGE.split("<script>", 1)[1].split("</script>", 1)[0]
    out = subprocess.run([NODE, "-e", DOM + script + CLICK_EVERY_BUTTON], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["agents"] == ["agt_a", "agt_a", "agt_b", "agt_b"]
    assert result["posted"] == ["/v1/admin/approvals/agt_a/dup-1/approve", "/v1/admin/approvals/agt_a/dup-1/deny",
                                "/v1/admin/approvals/agt_b/dup-1/approve", "/v1/admin/approvals/agt_b/dup-1/deny"]
