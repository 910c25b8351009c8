"""The asks issue "routing brain" reported as answered by the 8B model, and their kin in other languages and
shapes: every one of them is a task on code, so the router must send it to the standard tier — not below (a wrong
answer), and not to frontier either (money for nothing). Scored through the same route summary the gateway builds,
with the shipped model and the default margins."""

from __future__ import annotations

from typing import Any

import pytest

from actors.router.rank import route
from gateway.endpoints import CHAT
from schemas.config import Config
from schemas.pricing import ProviderPrices
from schemas.router import RouteRequest

NOW = 1_700_000_000_000

SQL_SNIPPET = """CREATE TABLE customers (id INT PRIMARY KEY, name TEXT);
CREATE TABLE orders (id INT, customer_id INT, total NUMERIC(10,2), ordered_at TIMESTAMP);"""
REGEX = r"^(?=.*[A-Z])(?=.*\d)[A-Za-z\d@$!%*?&]{8,}$"
LONG_FUNCTION = """def total_price(items, discount=None):
    total = 0
    for item in items:
        if item is not None:
            if item.get("price") is not None:
                if item.get("qty") is not None:
                    total = total + item.get("price") * item.get("qty")
    if discount is not None:
        if discount > 0:
            total = total - total * discount
    return total"""
LOOP = """i = 0
while i < len(items):
    if items[i] == target:
        print("found")
    continue"""

# (name, user message): the five asks, then their kin.
ASKS: list[tuple[str, str]] = [
    ("sql", f"write a SQL query that ranks customers by revenue\n\n{SQL_SNIPPET}"),
    ("regex", f"what does this regex mean {REGEX}"),
    ("shorter", f"make this function shorter\n\n```python\n{LONG_FUNCTION}\n```"),
    ("loop", f"my loop never terminates, fix it\n\n{LOOP}"),
    ("go", "implement binary search in Go"),
    # The same asks in other languages, and without the pasted code.
    ("sql es", f"escribe una consulta SQL que ordene a los clientes por ingresos\n\n{SQL_SNIPPET}"),
    ("sql de", "Schreib eine SQL-Abfrage, die Kunden nach Umsatz sortiert"),
    ("sql zh", f"写一个SQL查询，按收入给客户排名\n{SQL_SNIPPET}"),
    ("sql ja", "売上で顧客をランク付けするSQLクエリを書いてください"),
    ("sql bare", "write a SQL query that ranks customers by revenue"),
    ("regex fr", f"que signifie cette expression régulière : {REGEX}"),
    ("regex ru", f"что означает это регулярное выражение {REGEX}"),
    ("regex pt", f"o que essa regex quer dizer? `{REGEX}`"),
    ("regex zh", f"这个正则表达式是什么意思 {REGEX}"),
    ("shorter es", f"haz esta función más corta\n\n{LONG_FUNCTION}"),
    ("shorter de", f"Mach diese Funktion kürzer:\n```python\n{LONG_FUNCTION}\n```"),
    ("shorter ja", f"この関数をもっと短くしてください\n{LONG_FUNCTION}"),
    ("loop es", f"mi bucle nunca termina, arréglalo\n{LOOP}"),
    ("loop de", "Meine Schleife hört nie auf, kannst du das fixen?"),
    ("loop zh", f"我的循环一直不结束，帮我修一下\n```python\n{LOOP}\n```"),
    ("loop ru", "мой цикл никогда не заканчивается, исправь"),
    ("loop bare", "my while loop never ends, why?"),
    ("go es", "implementa búsqueda binaria en Go"),
    ("go fr", "implémente une recherche dichotomique en Go"),
    ("go zh", "用Go实现二分查找"),
    ("go ru", "реализуй бинарный поиск на Go"),
    ("go rust", "implement binary search in Rust"),
    ("go ja", "Goで二分探索を実装してください"),
]


def summary_request(text: str) -> RouteRequest:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    s = CHAT.summarize(body)
    return RouteRequest(request_id="t", model="auto", last_user_text=s.last_user_text, text_sample=s.text_sample,
                        input_tokens=s.input_tokens, turns=s.turns, max_tokens=s.max_tokens, tools=s.tools)


def prices() -> list[ProviderPrices]:
    return [ProviderPrices(provider=f"p_{tier}", tier=tier, models=[f"m_{tier}"], input_rate=rate, output_rate=rate,
                           context_length=200_000)
            for tier, rate in (("local", 10), ("standard", 300), ("frontier", 3000))]


@pytest.mark.parametrize("name,text", ASKS, ids=[a[0] for a in ASKS])
def test_short_coding_asks_go_to_the_standard_tier(name: str, text: str) -> None:
    reply = route(summary_request(text), prices(), {}, Config(), NOW)
    assert reply.explanation is not None and reply.explanation.scorer == "trained"
    assert reply.tier == "standard", (reply.explanation.probabilities, reply.explanation.top_features)
    assert reply.candidates[0].provider == "p_standard"
    assert reply.explanation.top_features  # the decision says why
