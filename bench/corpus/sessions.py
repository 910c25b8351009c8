"""Multi-turn families: the last ask decides the tier, whatever came before it (a long coding session that ends
with "thanks, how do I say cheers in Portuguese?" needs the local model; small talk that ends with a proof
needs a frontier one), and long sessions of code and reasoning that stay hard to the end."""

from __future__ import annotations

import random

from .code import SNIPPETS, fence
from .items import Item, Msg, asks_by_lang, convo, family, out_tokens
from .standard import PLANGS, TOOLS_SIMPLE

_CODE_TURNS = [
    "can you look at this?", "still failing, here's the new version", "ok that fixed the first part. now this:",
    "here's the rest of the module", "I changed it like you said:", "what about this function?",
]
_ASSISTANT_CODE = [
    "The problem is the loop variable is never updated. Here's a corrected version:",
    "You're mutating the list while iterating over it. Try this instead:",
    "Good catch. I'd restructure it like this:",
    "That works, but you can simplify it:",
    "The race comes from the shared counter. A lock around the update fixes it:",
]


def code_history(rng: random.Random, turns: int) -> list[str]:
    """``turns`` user/assistant exchanges about code, each with a snippet."""
    out: list[str] = []
    for _ in range(turns):
        s, t = rng.choice(SNIPPETS), rng.choice(SNIPPETS)
        out.append(f"{rng.choice(_CODE_TURNS)}\n{fence(s.code, s.lang)}")
        out.append(f"{rng.choice(_ASSISTANT_CODE)}\n{fence(t.code, t.lang)}")
    return out


_CHAT_HISTORY = [
    ("how was your weekend? mine was lazy", "Sounds relaxing! Anything fun planned for the week?"),
    ("I'm learning to cook, made pasta yesterday", "Nice! What kind of sauce did you make?"),
    ("what's a good name for a cat?", "How about Miso, Pixel or Biscuit?"),
    ("I have a job interview on Monday", "Good luck! Do you want to practise some questions?"),
]


@family("session_code_then_easy", "local", "long coding sessions whose last ask is easy and not about code")
def session_code_then_easy(rng: random.Random) -> list[Item]:
    last = {
        "en": ["thanks, that works! btw how do you say 'cheers' in Portuguese?", "perfect, thank you!!",
               "great. totally unrelated: what's the capital of New Zealand?", "cool thanks. what time is it in Tokyo "
               "when it's 9am in London?", "ok I'm done for today, good night", "ty! how many ounces in a cup?",
               "nice. can you suggest a name for my new laptop? something funny", "finally!! ok what should I "
               "eat for dinner, something quick", "thanks. how do you spell 'definitely'? I always get it wrong",
               "great, it's green now. what's 15% of 80 btw?", "ok that's enough coding for today lol. any tips to "
               "relax?", "ty. translate 'see you tomorrow' to German pls", "works! you're a lifesaver",
               "cool. what's the weather usually like in Dublin in march?", "yay. what day of the week was 1 Jan 2000?"],
        "es": ["¡gracias, ya funciona! por cierto, ¿cómo se dice 'salud' en alemán?", "perfecto, muchas gracias"],
        "de": ["Danke, läuft! Ganz andere Frage: Wie hoch ist der Mount Everest?", "super, danke dir!"],
        "fr": ["merci, ça marche ! au fait, c'est quoi la capitale de l'Australie ?"],
        "zh": ["好了，谢谢！顺便问一下，澳大利亚的首都是哪里？", "太好了，谢谢"],
        "ja": ["動きました、ありがとう！", "助かりました。ところで東京の今の時間は？"],
        "ru": ["спасибо, заработало! кстати, сколько граммов в унции?", "отлично, спасибо большое!"],
        "pt": ["valeu, funcionou! qual é a capital do Canadá mesmo?"],
    }
    return [Item("session_code_then_easy", "local", lang, convo(*code_history(rng, rng.randint(2, 6)), a),
                 out_tokens(rng, "local") // 3) for lang, a in asks_by_lang(rng, last, 40)]


@family("session_code_standard", "standard", "chats (casual or about code) whose last ask is an ordinary code task")
def session_code_standard(rng: random.Random) -> list[Item]:
    last = {
        "en": ["ok now write a unit test for it", "now implement the same thing in {pl}", "can you add error handling "
               "and logging?", "make it async", "add type hints and a docstring", "now write the SQL to store these "
               "in a table", "next: a regex to validate the input before it gets here", "can you turn that into a "
               "CLI with argparse?", "how would I write {task} in {pl}?", "implement {task} in {pl}",
               "why is the second version faster?", "what's the big-O of that?", "can you add pagination to it?",
               "now make it read the config from env vars", "convert it to a class", "how do I mock the HTTP call "
               "in the test?", "write a bash script that runs it every hour", "and the Dockerfile for it?"],
        "es": ["ahora escribe un test unitario para esto", "hazlo en {pl}", "implementa {task} en {pl}"],
        "de": ["Jetzt bitte einen Unit-Test dafür", "Schreib das Gleiche in {pl}"],
        "fr": ["maintenant écris un test unitaire", "refais-le en {pl}"],
        "zh": ["现在帮我写个单元测试", "用{pl}再实现一遍", "为什么第二个版本更快？"], "ja": ["次にユニットテストを書いて", "これを{pl}で書き直して"],
        "ru": ["теперь напиши юнит-тест", "перепиши это на {pl}", "добавь обработку ошибок"],
        "pt": ["agora escreve um teste unitário pra isso"],
    }
    tasks = ["binary search", "a word counter", "a stack", "an HTTP client with retries", "a JSON config loader"]
    items = []
    for lang, a in asks_by_lang(rng, last, 40):
        if rng.random() < 0.6:
            history = code_history(rng, rng.randint(1, 3))
        else:
            history = [x for pair in rng.sample(_CHAT_HISTORY, rng.randint(1, 3)) for x in pair]
        ask = a.format(pl=rng.choice(PLANGS), task=rng.choice(tasks))
        items.append(Item("session_code_standard", "standard", lang, convo(*history, ask), out_tokens(rng, "standard")))
    return items


@family("session_smalltalk_then_hard", "frontier", "casual chats whose last ask is a hard proof or design question")
def session_smalltalk_then_hard(rng: random.Random) -> list[Item]:
    last = {
        "en": ["anyway, random question: can you prove there are infinitely many primes p with p+2 not prime?",
               "btw I have a system design interview tomorrow: design a distributed cache with consistent hashing, "
               "replication and failure handling, and explain the trade-offs like an expert would",
               "ok serious question: derive the optimal stopping rule for the secretary problem and prove it",
               "also, could you analyse whether my startup should build on Kafka or Pulsar for multi-region event "
               "streaming with strict ordering per key? go deep on the trade-offs",
               "changing topic: prove that the halting problem is undecidable, and explain why the diagonal "
               "argument works", "random but: how would you design Uber's surge pricing system end to end, with "
               "the trade-offs between fairness, latency and revenue?", "also can you derive the formula for the "
               "variance of a sum of correlated random variables and apply it to a portfolio of 3 assets?",
               "hey unrelated, evaluate the trade-offs of event sourcing vs CRUD for a bank's core ledger in depth"],
        "es": ["por cierto: ¿puedes demostrar que el problema del viajante es NP-difícil?"],
        "de": ["Übrigens: Kannst du die optimale Stoppregel für das Sekretärinnenproblem herleiten und beweisen?"],
        "fr": ["au fait, peux-tu concevoir un cache distribué avec hachage cohérent et réplication, en discutant les "
               "compromis ?"],
        "zh": ["顺便问个难题：请推导秘书问题的最优停止规则并给出证明"],
        "ru": ["кстати, докажи, что задача коммивояжёра NP-трудная"],
        "ja": ["ところで、秘書問題の最適停止ルールを導出して証明してもらえますか？"],
        "pt": ["mudando de assunto: projete um cache distribuído com hashing consistente e replicação, discutindo os "
               "trade-offs"],
    }
    return [Item("session_smalltalk_then_hard", "frontier", lang,
                 convo(*[x for pair in rng.sample(_CHAT_HISTORY, rng.randint(1, 3)) for x in pair], a),
                 out_tokens(rng, "frontier")) for lang, a in asks_by_lang(rng, last, 25)]


@family("session_code_reasoning", "frontier", "long multi-turn sessions of code and reasoning that end hard")
def session_code_reasoning(rng: random.Random) -> list[Item]:
    last = {
        "en": ["Given everything above, redesign the locking so the cache and the store stay consistent under "
               "concurrent writes, and argue why it can't deadlock.", "OK, step back. Across all these fixes, what is "
               "the actual design flaw? Propose an architecture that removes the whole class of bugs and a migration "
               "plan.", "Now that we have all the pieces, prove the retry logic is idempotent end to end, or show a "
               "counterexample interleaving.", "Compare the three approaches we tried, with their failure modes "
               "under load and partial failure, and pick one for production with a justification.",
               "Right, with all this context: where exactly does the invariant break when two requests interleave? "
               "Walk through the interleaving and design a fix that also survives a crash between the two writes.",
               "Given the code so far, design the sharding so a hot key can't take down a node, and analyse what "
               "happens during resharding.", "Let's go deeper: formally state the consistency model this code gives "
               "us, show where it is weaker than we thought, and redesign it.", "Okay. Considering all the versions "
               "above, what's the root cause of the memory growth and what architecture would make it impossible?"],
        "es": ["Con todo lo anterior, rediseña el bloqueo para que la caché y el almacén sean consistentes con "
               "escrituras concurrentes y argumenta por qué no puede haber interbloqueo."],
        "de": ["Mit allem von oben: Entwirf das Locking so um, dass Cache und Store bei parallelen Schreibzugriffen "
               "konsistent bleiben, und begründe, warum kein Deadlock entstehen kann."],
        "fr": ["Avec tout ce qui précède, quel est le vrai défaut de conception ? Propose une architecture qui "
               "élimine cette classe de bugs et un plan de migration."],
        "zh": ["综合上面所有内容，重新设计加锁方案，使缓存和存储在并发写入下保持一致，并论证为什么不会死锁。"],
        "ja": ["これまでの内容を踏まえて、並行書き込みでもキャッシュとストアの整合性が保たれるようにロック設計を見直し、デッドロックしない理由を論証してください。"],
        "ru": ["С учётом всего выше, перепроектируй блокировки так, чтобы кэш и хранилище были согласованы при "
               "конкурентной записи, и обоснуй отсутствие взаимоблокировок."],
    }
    return [Item("session_code_reasoning", "frontier", lang, convo(*code_history(rng, rng.randint(3, 8)), a),
                 out_tokens(rng, "frontier")) for lang, a in asks_by_lang(rng, last, 40)]


_TOOLS_DEV = [
    {"type": "function", "function": {"name": "read_file", "description": "Read a file from the repository",
                                      "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "run_tests", "description": "Run the test suite and return failures",
                                      "parameters": {"type": "object", "properties": {"filter": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "apply_patch", "description": "Apply a unified diff to the repository",
                                      "parameters": {"type": "object", "properties": {"diff": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "search_code", "description": "grep the repository",
                                      "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}}}},
]


@family("agent_tools_complex", "frontier", "agent loops with developer tools: long code work with tool results")
def agent_tools_complex(rng: random.Random) -> list[Item]:
    tasks = {
        "en": ["The integration tests are flaky since we added the retry layer. Investigate with the tools, find the "
               "root cause across modules and fix it without breaking the idempotency guarantees.",
               "Migrate the billing module from floats to integer cents across the codebase, keep every test green "
               "and reason about rounding in the existing invoices.", "Find why the nightly job sometimes processes "
               "the same batch twice; read the scheduler, the queue worker and the lock code, explain the race and "
               "patch it with a test that reproduces it.", "Refactor the payment retry module so that every provider "
               "call is idempotent, update all call sites, and explain the design decisions.",
               "The p99 of the search endpoint regressed 3x after last week's merge. Use the tools to find the "
               "change responsible, explain why, and propose a fix that keeps the new feature."],
        "de": ["Die Integrationstests sind seit der Retry-Schicht instabil. Untersuche das mit den Tools, finde die "
               "Ursache über alle Module hinweg und behebe sie, ohne die Idempotenz zu brechen."],
        "zh": ["加了重试层以后集成测试变得不稳定。用这些工具调查，跨模块找出根本原因并修复，同时不能破坏幂等性保证。"],
        "es": ["Los tests de integración fallan de forma intermitente desde que añadimos la capa de reintentos. "
               "Investiga con las herramientas, encuentra la causa raíz y arréglala sin romper la idempotencia."],
    }
    items = []
    for lang, task in asks_by_lang(rng, tasks, 25):
        msgs: list[Msg] = [{"role": "system", "content": "You are a coding agent working in the user's repository."},
                           {"role": "user", "content": task}]
        for i in range(rng.randint(2, 6)):
            s = rng.choice(SNIPPETS)
            call_id = f"call_{i}"
            msgs.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": call_id, "type": "function",
                "function": {"name": "read_file", "arguments": f'{{"path": "src/module_{i}.py"}}'}}]})
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": s.code})
        items.append(Item("agent_tools_complex", "frontier", lang, msgs, out_tokens(rng, "frontier"), tools=_TOOLS_DEV))
    return items


@family("tool_chat_easy_last", "standard", "sessions with tools whose last ask is a simple lookup")
def tool_chat_easy_last(rng: random.Random) -> list[Item]:
    last = {
        "en": ["and what about tomorrow in Porto?", "ok book the 9am one", "add that to my calendar for friday 6pm",
               "and for Berlin?"],
        "es": ["¿y mañana en Valencia?"], "de": ["Und morgen in Köln?"], "zh": ["那明天杭州呢？"], "fr": ["et à Nice ?"],
    }
    items = []
    for lang, a in asks_by_lang(rng, last, 20):
        history = ["What's the weather in Lisbon?", "It's 22°C and sunny in Lisbon, with light wind from the north."]
        items.append(Item("tool_chat_easy_last", "standard", lang, convo(*history, a), out_tokens(rng, "standard") // 3,
                          tools=rng.sample(TOOLS_SIMPLE, 2)))
    return items
