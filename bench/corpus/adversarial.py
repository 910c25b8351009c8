"""A small adversarial set, written by hand after the tier model was trained and before any of it was scored:
new phrasings, new long texts, languages the corpus has little of, and the shapes that fooled the keyword scorer
(long pastes with an easy ask, one-line hard asks, code questions without a code block, multi-turn chats decided
by the last ask). It is never trained on; ``python -m bench.savings --split adversarial`` scores it.

    python -m bench.corpus.adversarial   # writes bench/corpus/adversarial.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("adversarial.jsonl")

_THREAD = "\n\n".join(
    f"From: {who}\nDate: {day} March 2025\nSubject: Re: venue for the spring workshop\n\n{body}"
    for who, day, body in [
        ("Lena Hofmann", 3, "Hi all, I called the two venues we shortlisted. The library hall is free on the 14th "
         "and 21st, the community centre only on the 21st. The hall has a projector but no kitchen; the centre "
         "has both but charges for cleaning. Let me know which you prefer so I can book before Friday."),
        ("Marco Ruiz", 4, "Thanks Lena. I'd go for the centre on the 21st, the kitchen matters if we serve lunch. "
         "Can we ask whether the cleaning fee is fixed or per hour? Also we need at least forty chairs."),
        ("Aisha Khan", 4, "Agree with Marco. I can bring the extra extension cables and the name badges. Should we "
         "send the invitation this week or wait for the booking confirmation?"),
        ("Lena Hofmann", 5, "The fee is fixed at 80 euros and they have fifty chairs. I will book the centre today "
         "and forward the confirmation. Let's send invitations on Monday once everything is signed."),
        ("Tom Becker", 6, "Great, thanks everyone. I'll draft the invitation over the weekend and share it here. "
         "Please tell me by Sunday if your dietary needs have changed since last year."),
    ] * 3)
_RECIPE = ("My grandmother's apple cake has been in the family for three generations, and every autumn we bake it "
           "together when the first apples come in from the orchard behind the house. " * 6
           + "\n\nIngredients: 4 apples, 200 g flour, 150 g sugar, 3 eggs, 125 g butter, a pinch of salt, one packet "
           "of baking powder and a little cinnamon.\n\n"
           + "Peel and slice the apples, cream the butter and sugar, add the eggs one at a time, fold in the flour "
           "with the baking powder, spread the batter in a buttered tin and press the apple slices into it. Bake "
           "for about 45 minutes at 180 degrees until golden, and let it cool before you cut it. " * 5)
_GERMAN = ("Der Verein lädt alle Mitglieder herzlich zur Jahreshauptversammlung ein, die am ersten Samstag im Mai im "
           "Gemeindehaus stattfindet. Auf der Tagesordnung stehen der Bericht des Vorstands, der Kassenbericht, die "
           "Entlastung des Vorstands sowie die Wahl eines neuen Schriftführers. Anträge sind bis spätestens zwei "
           "Wochen vor der Versammlung schriftlich einzureichen. " * 12)
_TRANSCRIPT = ("Meeting notes, 12 June 2025. Present: Sara, Jonas, Mei, Pedro.\n\n"
               + "Sara opened with the quarterly numbers, which were roughly flat. Jonas reported that the new "
               "onboarding flow reduced support tickets a little. Mei asked whether the mobile release could slip by "
               "a week; nobody objected. Pedro will check the budget for the summer event. " * 14)
_PRD = ("Product requirements: shared grocery lists.\n\nGoal: let households keep one grocery list that every member "
        "can edit from their phone, with changes visible to everyone within a few seconds.\n\n"
        + "Users can create a list, invite members by link, add items with an optional quantity and note, tick items "
        "off while shopping, and see who added what. Items can be grouped by aisle. A list can be archived after a "
        "shopping trip, and archived lists can be copied to start a new one. Members can leave a list; the owner "
        "can remove members. Offline edits must be kept and merged when the phone reconnects. Notifications are "
        "sent when someone starts a shopping trip, at most once per hour per list. " * 8)
_SUPPORT = ("Chat transcript, ticket #48213.\n\n" + "\n".join(
    f"{'Customer' if i % 2 == 0 else 'Agent'}: {line}" for i, line in enumerate([
        "Hi, my router keeps dropping the connection every evening around 8.",
        "Sorry to hear that. Have you tried restarting it?",
        "Yes, several times, and I also moved it away from the microwave like your website says.",
        "Thanks. Can you tell me the model number on the sticker at the bottom?",
        "It's the HX-220, bought last year.",
        "Okay. Please check whether the firmware version in the app is 3.1 or newer.",
        "It says 2.9. I tried updating but the app shows an error.",
        "Understood. I can see many connected devices on your line in the evening. Do you stream a lot then?",
        "Yes, two TVs and a game console, but it worked fine until last month.",
    ] * 4)))
_REPORT = ("Annual report excerpt. Revenue grew 6% to 212 million, while operating margin fell from 11% to 8% as energy "
           "and wage costs rose. The term loan of 90 million carries a floating rate of Euribor plus 2.4% and a "
           "covenant requiring net debt below 3.0 times EBITDA; the ratio stood at 2.7 at year end. Cash flow from "
           "operations was 19 million, capital expenditure 24 million. The board expects rates to fall next year "
           "but warns that two large customers are renegotiating contracts. " * 22)
_SERVICE = "\n\n".join(f"### {path}\n```python\n{code}\n```" for path, code in [
    ("payments/api.py", "@app.post('/pay')\nasync def pay(req: PayRequest):\n    charge = await gateway.charge(req.card, "
                        "req.amount)\n    await db.insert('payments', id=req.id, charge=charge.id)\n    await queue.publish("
                        "'paid', req.id)\n    return {'ok': True}"),
    ("payments/worker.py", "async def on_paid(msg):\n    order = await db.get('orders', msg.id)\n    order.status = 'paid'\n"
                           "    await db.save(order)\n    await email.send(order.customer, 'receipt')\n    await msg.ack()"),
    ("payments/retry.py", "async def with_retry(fn, attempts=5):\n    for i in range(attempts):\n        try:\n"
                          "            return await fn()\n        except Exception:\n            await asyncio.sleep(2 ** i)\n"
                          "    raise RuntimeError('gave up')"),
    ("payments/gateway.py", "class Gateway:\n    async def charge(self, card, amount):\n        return await with_retry("
                            "lambda: self.http.post('/charges', json={'card': card, 'amount': amount}))"),
] * 3)
_CODE_TURNS = [
    "here's my ledger class\n```python\nclass Ledger:\n    def __init__(self):\n        self.entries = []\n"
    "    def post(self, a, b, amount):\n        self.entries.append((a, b, amount))\n```",
    "Looks fine for a start. You might want to check that amounts are positive.",
    "ok added that. now two threads post at once and the balance is off", "Wrap post() in a lock:\n```python\n"
    "with self.lock:\n    self.entries.append((a, b, amount))\n```",
    "better. but after a crash we lose the last entries", "Write each entry to an append-only file and fsync before "
    "returning; replay the file on start.",
]
_WEATHER_TOOL = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                                   "parameters": {"type": "object", "properties": {
                                                       "city": {"type": "string"}}, "required": ["city"]}}}]


def _u(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _chat(*turns: str) -> list[dict[str, Any]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


# (tier, lang, messages, tools, output tokens)
ITEMS: list[tuple[str, str, list[dict[str, Any]], Any, int]] = [
    # --- local ----------------------------------------------------------------------------------------------------
    ("local", "en", _u("yo what's good"), None, 20),
    ("local", "en", _u("Can you tell me how many teaspoons are in a tablespoon?"), None, 30),
    ("local", "en", _u("spell accommodate for me"), None, 10),
    ("local", "es", _u("¿Cuál es la moneda de Suiza?"), None, 20),
    ("local", "de", _u("Wie heißt die Hauptstadt von Australien?"), None, 20),
    ("local", "en", _u("Translate to French: the cat is sleeping on the sofa"), None, 20),
    ("local", "en", _u("Is 'Their going to the park' correct?"), None, 40),
    ("local", "en", _u("turn 'meeting tmrw 3pm room b' into a proper sentence"), None, 25),
    ("local", "en", _u("Sentiment of: 'I guess the food was okay but the wait was insane'"), None, 10),
    ("local", "en", _u("What's 72 kg in stones and pounds?"), None, 30),
    ("local", "en", _u("Quick: name three fruits that are red"), None, 15),
    ("local", "zh", _u("嗨，最近怎么样？"), None, 30),
    ("local", "ja", _u("東京とニューヨークの時差は何時間ですか？"), None, 30),
    ("local", "nl", _u("In welk jaar begon de Tweede Wereldoorlog?"), None, 15),
    ("local", "tr", _u("Merhaba! Nasılsın?"), None, 20),
    ("local", "pl", _u("Jak się mówi 'dziękuję' po angielsku?"), None, 15),
    ("local", "en", _u(f"{_THREAD}\n\nwho sent the last email in this thread?"), None, 15),
    ("local", "en", _u(f"How many eggs does this need?\n\n{_RECIPE}"), None, 10),
    ("local", "de", _u(f"{_GERMAN}\n\nIn welchem Monat ist die Versammlung?"), None, 10),
    ("local", "en", _u(f"{_TRANSCRIPT}\n\nwhat's the date at the top of these notes?"), None, 10),
    ("local", "en", _chat(*_CODE_TURNS, "lol thanks, what's a good name for a goldfish?"), None, 30),
    ("local", "en", _chat("Should we use Kafka or Pulsar for our event bus across three regions?",
                          "It depends on your ordering and geo-replication needs; Pulsar has built-in geo-"
                          "replication, Kafka needs MirrorMaker or Cluster Linking. " * 6,
                          "cool, how do I say 'well done' in Spanish?"), None, 15),
    ("local", "en", _u("capitalize this: new york city marathon results"), None, 15),
    ("local", "en", _u("Is this email spam? 'Dear winner, send $50 to claim your inheritance'"), None, 15),
    ("local", "en", _u("Rewrite in one sentence, friendlier: 'Your request has been denied.'"), None, 25),
    ("local", "pt", _u("Qual é a fórmula química da água?"), None, 10),
    ("local", "vi", _u("Xin chào, bạn khỏe không?"), None, 20),
    ("local", "fr", _u("C'est quoi la différence entre 'quand' et 'quant' ?"), None, 60),
    # --- standard -------------------------------------------------------------------------------------------------
    ("standard", "en", _u("how do I reverse a string in Java without StringBuilder"), None, 250),
    ("standard", "en", _u("regex to match a hex color like #fff or #a1b2c3"), None, 150),
    ("standard", "en", _u("why does my python script say 'list index out of range' when I pop inside a for loop"),
     None, 300),
    ("standard", "en", _u("write a bash loop that pings 10.0.0.1 to 10.0.0.20 and prints which are up"), None, 200),
    ("standard", "en", _u("SELECT name FROM users WHERE created_at > now() - 7 -- this errors in postgres, why?"),
     None, 250),
    ("standard", "en", _u("convert this callback code to async/await: fs.readFile('a.txt', (err, data) => { if (err) "
                          "throw err; console.log(data) })"), None, 200),
    ("standard", "en", _u("Kotlin: how do I make a data class implement Comparable by age"), None, 250),
    ("standard", "en", _u("what's the difference between == and === in JS, with examples"), None, 300),
    ("standard", "es", _u("Escribe una función en Python que devuelva los números primos hasta n"), None, 250),
    ("standard", "de", _u("Wie schreibe ich in Rust eine Funktion, die einen Vec<i32> sortiert und Duplikate "
                          "entfernt?"), None, 250),
    ("standard", "zh", _u("用JavaScript写一个防抖函数"), None, 250),
    ("standard", "ja", _u("Pythonでリストの重複を削除する方法を教えて"), None, 200),
    ("standard", "ru", _u("напиши SQL запрос: средняя зарплата по отделам, только отделы где больше 5 человек"),
     None, 200),
    ("standard", "nl", _u("Hoe schrijf ik een for-loop in C# die over een dictionary itereert?"), None, 200),
    ("standard", "en", _u(f"{_PRD}\n\nturn this into a list of user stories with acceptance criteria"), None, 900),
    ("standard", "en", _u(f"Summarize the customer's issue and the steps already tried, as bullets.\n\n{_SUPPORT}"),
     None, 250),
    ("standard", "en", _u("A store sells pens at 3 for $2, or single pens at $0.75. What's the cheapest way to buy "
                          "17 pens and what does it cost?"), None, 250),
    ("standard", "it", _u("Il mio treno parte alle 8:40 e va a 120 km/h, un altro parte alle 9:10 a 150 km/h dalla "
                          "stessa stazione: quando lo raggiunge?"), None, 250),
    ("standard", "en", _u("Give me step by step instructions to set up SSH keys for GitHub on Windows"), None, 400),
    ("standard", "en", _u("Extract all dates and amounts from this into JSON: 'Paid 45.00 on 3 March, 120.50 on 17 "
                          "March, refund of 20 on 2 April'"), None, 150),
    ("standard", "en", _u("what's the weather in Madrid tomorrow?"), _WEATHER_TOOL, 60),
    ("standard", "en", _chat("hey! long day", "Sorry to hear that, anything I can help with?",
                             "ok, can you write me a python script that renames all .txt files to .md in a folder?"),
     None, 250),
    ("standard", "en", _chat(*_CODE_TURNS, "now add retries with exponential backoff"), None, 350),
    ("standard", "en", _u("make this shorter: def add(a,b):\n    result = a + b\n    return result"), None, 80),
    ("standard", "en", _u("explain what `git rebase -i HEAD~3` does"), None, 250),
    ("standard", "en", _u("my docker container exits immediately with code 0, why?"), None, 300),
    ("standard", "en", _u("nginx gives 502 bad gateway behind cloudflare, what should I check?"), None, 350),
    ("standard", "en", _u("Excel: how do I count unique values in column B?"), None, 150),
    ("standard", "en", _u("kubectl command to see logs of a crashed pod"), None, 120),
    ("standard", "en", _u("Write a cover letter for a nursing job: mention 5 years in ICU, night shifts, and my "
                          "German B2 certificate; under 300 words"), None, 400),
    ("standard", "fr", _u("Comment je fais un graphique à deux axes avec matplotlib ?"), None, 250),
    ("standard", "pl", _u("Napisz funkcję w Go, która zlicza słowa w pliku"), None, 250),
    # --- frontier -------------------------------------------------------------------------------------------------
    ("frontier", "en", _u("Prove that every group of prime order is cyclic, and say where primality is used."),
     None, 700),
    ("frontier", "en", _u("Design a key-value store that survives the loss of any two of five datacenters while keeping "
                          "p99 reads under 10 ms. What do you give up?"), None, 1800),
    ("frontier", "en", _u("Derive the posterior of a Beta-Binomial model and show how sequential updates compose."),
     None, 900),
    ("frontier", "en", _u("Can a consensus protocol tolerate f Byzantine nodes with only 3f nodes? Argue carefully."),
     None, 1200),
    ("frontier", "en", _u("CRDTs vs operational transformation for a collaborative spreadsheet with formulas: which "
                          "breaks first under concurrent edits, and why?"), None, 1500),
    ("frontier", "fr", _u("Démontre que la série harmonique diverge, puis estime la vitesse de divergence."), None, 800),
    ("frontier", "de", _u("Entwirf eine Architektur für ein globales Zahlungssystem mit genau-einmaliger Verarbeitung "
                          "über drei Kontinente und begründe die Kompromisse."), None, 1800),
    ("frontier", "zh", _u("设计一个支持十亿用户的消息推送系统，分析一致性、延迟和成本之间的取舍"), None, 1800),
    ("frontier", "ja", _u("分散トランザクションで2相コミットとSagaのどちらを選ぶべきか、障害時の挙動を比較して論じてください"), None, 1500),
    ("frontier", "ru", _u("Докажи, что в любом графе число вершин нечётной степени чётно, и обобщи на гиперграфы"),
     None, 900),
    ("frontier", "es", _u("¿Puede un algoritmo de ordenación por comparaciones ser más rápido que n log n en promedio? "
                          "Demuéstralo."), None, 900),
    ("frontier", "en", _u(f"{_REPORT}\n\nShould we refinance now or wait a year? Weigh the covenant, rate scenarios "
                          "and cash flow, and give a recommendation with its risks."), None, 1500),
    ("frontier", "en", _u(f"Find every place where this service can lose or double a payment under retries and "
                          f"crashes, and redesign the flow so it can't.\n\n{_SERVICE}"), None, 2000),
    ("frontier", "en", _chat(*_CODE_TURNS, "Given all of this, what's the minimal set of invariants that keeps the "
                             "ledger consistent, and can you prove the new code maintains them?"), None, 1500),
    ("frontier", "en", _chat("haha my cat just knocked over my coffee", "Oh no! Hope the laptop survived.",
                             "btw can you derive the optimal bet fraction for a repeated biased coin game (Kelly) and "
                             "prove it maximizes long-run log wealth?"), None, 1200),
    ("frontier", "en", _u("My father (78) takes warfarin and amiodarone and was just prescribed clarithromycin. Which "
                          "interactions matter, what INR change should we expect, and what should we ask the "
                          "doctor?"), None, 900),
    ("frontier", "en", _u("We're a German startup processing health data of US patients through a Polish contractor. "
                          "Walk through GDPR, HIPAA and the data-transfer rules, and where we're most exposed."), None,
     1500),
    ("frontier", "en", _u("What are the strongest arguments against the efficient market hypothesis, and which "
                          "anomalies survived replication?"), None, 1500),
    ("frontier", "en", _u("Give an O(k log k) algorithm for the k-th smallest pair sum of two sorted arrays, prove it "
                          "correct and argue a matching lower bound."), None, 1200),
    ("frontier", "en", _u("Why can't a type checker for a Turing-complete type system be total, sound and complete at "
                          "once?"), None, 900),
    ("frontier", "pt", _u("Projete um sistema de detecção de fraude em tempo real para 10 mil transações por segundo e "
                          "discuta os trade-offs entre precisão, latência e custo"), None, 1800),
    ("frontier", "ko", _u("10억 건의 로그에서 실시간으로 이상 징후를 탐지하는 시스템을 설계하고, 정확도와 비용의 트레이드오프를 분석해 주세요"), None,
     1800),
]


def rows() -> list[dict[str, Any]]:
    out = []
    for i, (tier, lang, messages, tools, out_tokens) in enumerate(ITEMS):
        body: dict[str, Any] = {"model": "auto", "messages": messages}
        if tools:
            body["tools"] = tools
        out.append({"id": f"adv-{i:03d}", "family": f"adversarial_{tier}", "tier": tier, "lang": lang,
                    "split": "adversarial", "body": body, "output_tokens": out_tokens})
    return out


def main() -> None:
    with OUT.open("w", encoding="utf-8") as f:
        for r in rows():
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(ITEMS)} requests -> {OUT}")


if __name__ == "__main__":
    main()
