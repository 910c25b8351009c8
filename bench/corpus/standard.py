"""Standard-tier families: any task on code (write, fix, explain, refactor, review; SQL, regex, shell, config),
structured extraction, summaries and analysis of a few pages, math word problems, multi-step instructions."""

from __future__ import annotations

import random

from .code import CONFIGS, REGEXES, SHELL, SLOW_QUERIES, SNIPPETS, SQL_SCHEMAS, TRACES, fence
from .items import Item, asks_by_lang, casing, family, out_tokens, user
from .prose import PARAGRAPHS, long_document

T = "standard"
PLANGS = ["Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "C++", "Ruby", "PHP", "Kotlin", "Swift",
          "C", "Scala", "Elixir"]

# Small programming tasks, written per language (the asks name them the way a user of that language would).
_TASKS = {
    "en": ["binary search", "a function that reverses a linked list", "FizzBuzz", "a function to check if a string "
           "is a palindrome", "a debounce function", "a simple HTTP server that returns hello", "quicksort",
           "a function that flattens a nested list", "an LRU cache", "a CSV parser that handles quoted fields",
           "a function that validates an email address", "a stack using two queues", "merge two sorted arrays",
           "a rate limiter (token bucket)", "a function to count word frequencies in a file",
           "a retry helper with exponential backoff", "a function that converts roman numerals to integers",
           "a thread-safe counter", "a function that chunks a list into groups of n", "a trie with insert and search",
           "a REST endpoint that returns a list of users as JSON", "a function that deep-clones an object",
           "breadth-first search on a grid", "a command line tool that renames files by date",
           "a function that removes duplicates while keeping order", "a producer/consumer queue",
           "a function that parses a duration like '1h30m'", "pagination for a list of results",
           "a function that computes the median of a stream", "a simple tokenizer for arithmetic expressions"],
    "es": ["búsqueda binaria", "una función que invierta una lista enlazada", "un servidor HTTP sencillo",
           "una función que valide un DNI", "ordenamiento por mezcla (merge sort)", "una función que cuente palabras"],
    "de": ["binäre Suche", "eine Funktion, die prüft, ob ein String ein Palindrom ist", "einen einfachen Webserver",
           "eine Warteschlange mit zwei Stacks", "eine Funktion, die Duplikate entfernt"],
    "fr": ["une recherche dichotomique", "une fonction qui inverse une chaîne", "un petit serveur web",
           "un tri fusion", "une fonction qui compte les voyelles"],
    "pt": ["busca binária", "uma função que verifica se um número é primo", "uma API REST simples"],
    "it": ["la ricerca binaria", "una funzione che calcola il fattoriale"],
    "zh": ["二分查找", "一个反转链表的函数", "快速排序", "一个简单的HTTP服务器", "LRU缓存"],
    "ja": ["二分探索", "文字列が回文かどうか判定する関数", "簡単なWebサーバー"],
    "ru": ["бинарный поиск", "функцию, которая переворачивает связный список", "простой HTTP-сервер",
           "сортировку слиянием"],
}
_WRITE = {
    "en": ["implement {task} in {pl}", "Write {task} in {pl}.", "can you write {task} in {pl}?",
           "{pl}: {task}, please", "I need {task} in {pl}, with a couple of tests",
           "how would I write {task} in {pl}", "show me {task} in idiomatic {pl}", "quick {pl} snippet for {task}?",
           "Write me {task} using {pl}. Keep it simple.", "give me {task} ({pl}), no external libraries"],
    "es": ["implementa {task} en {pl}", "Escribe {task} en {pl}, por favor", "¿me haces {task} en {pl}?",
           "necesito {task} en {pl}"],
    "de": ["Implementiere {task} in {pl}", "Schreib mir {task} in {pl}", "Wie programmiere ich {task} in {pl}?"],
    "fr": ["Implémente {task} en {pl}", "écris {task} en {pl} stp", "Comment coder {task} en {pl} ?"],
    "pt": ["implemente {task} em {pl}", "escreva {task} em {pl}"],
    "it": ["scrivi {task} in {pl}", "implementa {task} in {pl}"],
    "zh": ["用{pl}实现{task}", "请用{pl}写一个{task}", "{pl}怎么写{task}？"],
    "ja": ["{pl}で{task}を実装してください", "{pl}で{task}を書いて"],
    "ru": ["реализуй {task} на {pl}", "напиши {task} на {pl}"],
}


@family("code_write_noblock", T, "write a small program or function in a named language, no code pasted")
def code_write_noblock(rng: random.Random) -> list[Item]:
    items = []
    for lang, a in asks_by_lang(rng, _WRITE, 90):
        task = rng.choice(_TASKS[lang] if lang in _TASKS and rng.random() < 0.85 else _TASKS["en"])
        items.append(Item("code_write_noblock", T, lang, user(casing(rng, a.format(task=task, pl=rng.choice(PLANGS)))),
                          out_tokens(rng, T)))
    return items


_FIX = {
    "en": ["fix this", "This doesn't work, can you fix it?", "what's wrong with this code?", "why does this crash",
           "Can you find the bug?", "It gives the wrong result sometimes. Help!", "fix the bug pls",
           "this returns garbage, what am I doing wrong", "Something is off here, fix it and explain briefly"],
    "es": ["arregla esto", "¿por qué no funciona este código?", "encuentra el error, por favor"],
    "de": ["Kannst du den Fehler finden?", "Warum funktioniert das nicht?", "bitte korrigieren"],
    "fr": ["corrige ce code", "pourquoi ça ne marche pas ?", "il y a un bug, tu le vois ?"],
    "pt": ["corrige esse código pra mim", "por que isso não funciona?"],
    "it": ["correggi questo codice"],
    "zh": ["帮我改一下这段代码", "这段代码哪里有问题？", "为什么运行结果不对？"],
    "ja": ["このコードのバグを直してください", "なぜ動かないのでしょうか？"],
    "ru": ["исправь код", "почему это не работает?", "найди ошибку"],
}


def _with_code(rng: random.Random, ask: str, code: str, lang: str) -> str:
    """Pasted code, fenced or not (many users paste it bare), with the ask before or after it."""
    block = fence(code, lang) if rng.random() < 0.65 else code
    return f"{ask}\n\n{block}" if rng.random() < 0.5 else f"{block}\n\n{ask}"


@family("code_fix_paste", T, "fix pasted code in one of a dozen languages")
def code_fix_paste(rng: random.Random) -> list[Item]:
    buggy = [s for s in SNIPPETS if s.tag == "buggy"]
    items = []
    for lang, a in asks_by_lang(rng, _FIX, 60):
        s = rng.choice(buggy)
        items.append(Item("code_fix_paste", T, lang, user(_with_code(rng, casing(rng, a), s.code, s.lang)),
                          out_tokens(rng, T)))
    return items


@family("code_explain_paste", T, "explain what pasted code does")
def code_explain_paste(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["what does this do?", "Explain this code line by line", "can someone explain this to me like I'm new "
               "to {pl}", "I found this in our repo, what is it for?", "explain", "ELI5 this snippet",
               "What's the time complexity of this?", "walk me through what happens when this runs"],
        "es": ["¿qué hace este código?", "explícame este fragmento"],
        "de": ["Was macht dieser Code?", "Erklär mir das bitte Zeile für Zeile"],
        "fr": ["Tu peux m'expliquer ce code ?", "que fait cette fonction ?"],
        "pt": ["o que esse código faz?"],
        "zh": ["解释一下这段代码", "这段代码是做什么的？"],
        "ja": ["このコードは何をしていますか？"],
        "ru": ["объясни, что делает этот код"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 50):
        s = rng.choice(SNIPPETS)
        items.append(Item("code_explain_paste", T, lang, user(_with_code(rng, casing(rng, a.format(pl=s.lang)), s.code,
                                                                        s.lang)), out_tokens(rng, T)))
    return items


@family("code_refactor", T, "make pasted code shorter, cleaner, more idiomatic, typed")
def code_refactor(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["make this function shorter", "Can you clean this up?", "refactor this to be more idiomatic",
               "simplify pls", "Rewrite this with a list comprehension / map / filter, whatever fits",
               "how can I make this more readable?", "add type hints to this", "turn this into a one-liner if possible",
               "Make this less nested", "convert this to {other}"],
        "es": ["haz esta función más corta", "refactoriza este código", "¿cómo lo simplifico?"],
        "de": ["Mach die Funktion kürzer", "Refaktoriere das bitte", "Geht das eleganter?"],
        "fr": ["raccourcis cette fonction", "rends ce code plus lisible"],
        "pt": ["deixa essa função mais curta", "refatora isso"],
        "it": ["rendi questa funzione più corta"],
        "zh": ["把这个函数写得更简洁一点", "重构一下这段代码"],
        "ja": ["この関数をもっと短くして"],
        "ru": ["сделай эту функцию короче", "отрефактори этот код"],
    }
    pool = [s for s in SNIPPETS if s.tag in ("verbose", "plain")]
    items = []
    for lang, a in asks_by_lang(rng, asks, 50):
        s = rng.choice(pool)
        ask = casing(rng, a.format(other=rng.choice([p for p in PLANGS if p != s.lang])))
        items.append(Item("code_refactor", T, lang, user(_with_code(rng, ask, s.code, s.lang)), out_tokens(rng, T)))
    return items


@family("code_review", T, "review a pasted change or function")
def code_review(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Review this PR please, anything I should change before merging?", "code review?", "Any issues with "
               "this? It's going to production tomorrow", "is this safe? looks fine to me", "Could you review this for "
               "bugs and style", "What would a senior dev say about this code?"],
        "es": ["¿Me revisas este código?", "Revisión de código, por favor"],
        "de": ["Kannst du ein Code-Review machen?"],
        "fr": ["Tu peux faire une revue de ce code ?"],
        "zh": ["帮我review一下这段代码"],
        "ja": ["このコードをレビューしてください"],
        "ru": ["сделай ревью этого кода"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 30):
        s = rng.choice(SNIPPETS)
        code = s.code if rng.random() < 0.6 else "\n".join("+" + line for line in s.code.splitlines())
        items.append(Item("code_review", T, lang, user(_with_code(rng, casing(rng, a), code, s.lang)),
                          out_tokens(rng, T)))
    return items


@family("debug_symptom", T, "debugging from a symptom or an error message, with or without code")
def debug_symptom(rng: random.Random) -> list[Item]:
    bare = {
        "en": ["my loop never terminates, fix it", "why is my for loop running forever in {pl}?",
               "getting 'index out of range' in {pl} when I loop over a list and remove items, what's going on",
               "my {pl} program works locally but crashes in docker with 'permission denied'",
               "npm install fails with EACCES, how do I fix it", "git says 'detached HEAD', did I lose my work?",
               "my React component re-renders infinitely", "segfault when I free a pointer twice?",
               "why does 0.1 + 0.2 != 0.3 in {pl}", "my async function returns a Promise instead of the value",
               "pandas says SettingWithCopyWarning, should I care?", "the page is blank after deploying to netlify",
               "Cannot find module 'express' but it's in package.json", "my recursion hits maximum recursion depth",
               "CORS error when calling my API from localhost:3000"],
        "es": ["mi bucle nunca termina, arréglalo", "me sale 'undefined is not a function' en {pl}, ¿por qué?",
               "el programa se queda colgado al leer un archivo grande"],
        "de": ["Meine Schleife hört nie auf, was mache ich falsch?", "Ich bekomme eine NullPointerException in {pl}",
               "Mein Docker-Container startet und stoppt sofort wieder"],
        "fr": ["ma boucle ne s'arrête jamais, corrige-la", "erreur 'undefined is not a function' en {pl}, une idée ?"],
        "pt": ["meu loop nunca termina, o que está errado?", "dá erro de 'null pointer' no {pl}"],
        "it": ["il mio ciclo non finisce mai, perché?"],
        "zh": ["我的循环一直不结束，帮我修一下", "{pl}报错 index out of range 是什么原因？", "程序在服务器上运行一会儿就内存溢出"],
        "ja": ["ループが終わらないので直してください", "{pl}でnullエラーが出ます"],
        "ru": ["мой цикл никогда не заканчивается, почини", "в {pl} вылетает ошибка 'index out of range', почему?"],
    }
    with_trace = {
        "en": ["I get this error, what does it mean?", "how do I fix this", "help, this started after I updated",
               "what causes this?", "any idea?"],
        "es": ["¿Qué significa este error?"], "de": ["Was bedeutet dieser Fehler?"], "fr": ["Que veut dire cette erreur ?"],
        "zh": ["这个报错怎么解决？"], "ja": ["このエラーの直し方は？"], "ru": ["что означает эта ошибка?"],
    }
    items = []
    for lang, a in asks_by_lang(rng, bare, 35):
        items.append(Item("debug_symptom", T, lang, user(casing(rng, a.format(pl=rng.choice(PLANGS)))),
                          out_tokens(rng, T)))
    for lang, a in asks_by_lang(rng, with_trace, 25):
        pl, trace = rng.choice(TRACES)
        items.append(Item("debug_symptom", T, lang, user(f"{a}\n\n{trace}" if rng.random() < 0.6 else f"{trace}\n{a}"),
                          out_tokens(rng, T)))
    return items


@family("sql_write", T, "write a SQL query, from a described or pasted schema")
def sql_write(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["write a SQL query that ranks customers by revenue", "SQL to get the top 5 products by sales last month",
               "query for employees earning more than their department's average", "how do I find duplicate emails in "
               "a users table", "Postgres: count signups per day for the last 30 days", "write a query that returns "
               "each customer's most recent order", "SQL for a running total of sales by date",
               "get all departments with no employees", "MySQL query to delete rows older than 90 days",
               "sql: monthly active users from an events table", "pivot order counts by status per month",
               "find customers who bought in 2023 but not in 2024"],
        "es": ["escribe una consulta SQL que ordene a los clientes por facturación", "consulta SQL para sacar los "
               "5 productos más vendidos", "¿cómo encuentro emails duplicados en SQL?"],
        "de": ["Schreib eine SQL-Abfrage, die Kunden nach Umsatz sortiert", "SQL: Anzahl Bestellungen pro Monat"],
        "fr": ["écris une requête SQL qui classe les clients par chiffre d'affaires", "requête SQL pour les doublons"],
        "pt": ["escreva uma consulta SQL que traga o faturamento por cliente"],
        "it": ["scrivi una query SQL che ordini i clienti per fatturato"],
        "zh": ["写一个SQL查询，按收入给客户排名", "SQL怎么查每个部门工资最高的员工？"],
        "ja": ["売上順に顧客をランク付けするSQLを書いて"],
        "ru": ["напиши SQL-запрос, который ранжирует клиентов по выручке"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 60):
        text = casing(rng, a)
        r = rng.random()
        if r < 0.45:
            schema = rng.choice(SQL_SCHEMAS)
            text = f"{text}\n\n{fence(schema, 'sql') if rng.random() < 0.5 else schema}"
        elif r < 0.6:
            text = f"{rng.choice(SQL_SCHEMAS)}\n{text}"
        items.append(Item("sql_write", T, lang, user(text), out_tokens(rng, T)))
    return items


@family("sql_tune", T, "explain or speed up a pasted SQL query")
def sql_tune(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["this query is slow, how can I speed it up?", "what indexes would help here", "explain this query",
               "rewrite this without the subqueries", "is there a bug in this query?", "why is this doing a full "
               "table scan?", "convert this to use a CTE", "would a window function be better here?",
               "Explain the EXPLAIN plan I'd expect for this and how to improve it"],
        "es": ["esta consulta va lenta, ¿cómo la optimizo?"], "de": ["Warum ist diese Abfrage so langsam?"],
        "fr": ["cette requête est lente, des idées ?"], "zh": ["这个SQL很慢，怎么优化？"], "ru": ["как ускорить этот запрос?"],
    }
    return [Item("sql_tune", T, lang, user(_with_code(rng, casing(rng, a), rng.choice(SLOW_QUERIES), "sql")),
                 out_tokens(rng, T)) for lang, a in asks_by_lang(rng, asks, 36)]


@family("regex", T, "write or explain a regular expression")
def regex(rng: random.Random) -> list[Item]:
    explain = {
        "en": ["what does this regex mean? {r}", "explain this regex: {r}", "Can you break down {r} for me",
               "will {r} match 'abc123'?", "why doesn't {r} match my input?", "{r} <- what is this"],
        "es": ["¿qué significa esta expresión regular? {r}", "explícame esta regex: {r}"],
        "de": ["Was bedeutet dieser reguläre Ausdruck: {r}", "Erklär mir die Regex {r}"],
        "fr": ["que veut dire cette regex : {r}"], "pt": ["o que essa regex faz? {r}"],
        "zh": ["这个正则是什么意思？{r}", "解释一下这个正则表达式：{r}"], "ja": ["この正規表現の意味は？ {r}"],
        "ru": ["что значит эта регулярка: {r}"],
    }
    write = {
        "en": ["regex for a valid email", "Write a regex that matches dates like 2024-03-15",
               "regular expression to extract all hashtags from a tweet", "regex that matches a US phone number",
               "I need a regex for passwords: 8+ chars, one digit, one uppercase", "regex to strip html tags",
               "match an IPv4 address with a regex", "regex to find repeated words"],
        "es": ["expresión regular para validar un código postal español", "regex para extraer números de un texto"],
        "de": ["Regex für deutsche Postleitzahlen", "regulärer Ausdruck für eine IBAN"],
        "fr": ["une regex pour valider un numéro de téléphone français"], "zh": ["写一个匹配手机号的正则"],
        "ja": ["郵便番号にマッチする正規表現を書いて"], "ru": ["регулярное выражение для email"],
    }
    items = []
    for lang, a in asks_by_lang(rng, explain, 30):
        r = rng.choice(REGEXES)
        items.append(Item("regex", T, lang, user(casing(rng, a.format(r=f"`{r}`" if rng.random() < 0.4 else r))),
                          out_tokens(rng, T)))
    for lang, a in asks_by_lang(rng, write, 20):
        items.append(Item("regex", T, lang, user(casing(rng, a)), out_tokens(rng, T)))
    return items


@family("shell", T, "shell one-liners and scripts: bash, find, awk, PowerShell, git")
def shell(rng: random.Random) -> list[Item]:
    bare = {
        "en": ["bash one-liner to find the 10 largest files in a directory", "how do I delete all .pyc files "
               "recursively", "awk command to sum the third column of a csv", "how do I undo my last git commit but "
               "keep the changes", "PowerShell: list services that are stopped", "how to kill the process on port 8080",
               "write a bash script that backs up /etc every night", "find lines in a log that contain ERROR and count "
               "them per hour", "rsync a folder to a remote server but skip node_modules", "sed to replace foo with "
               "bar in all .txt files", "how do I run a command every 5 minutes with cron",
               "tar and gzip a directory excluding .git", "how do I see which process is using the most memory "
               "in linux", "git: squash my last 3 commits into one", "bash loop over lines of a file with spaces",
               "one-liner to count unique IPs in an nginx access log", "ssh tunnel to reach a remote postgres on "
               "port 5432", "how do I make a script executable and put it in my PATH", "PowerShell: rename all "
               "files in a folder to lowercase", "zsh: alias that cds to my project and activates the venv",
               "find and replace a string across a git repo, only in tracked files", "curl a JSON API with a "
               "bearer token and pretty print the result"],
        "es": ["comando bash para buscar archivos de más de 1 GB", "¿cómo borro una rama remota en git?"],
        "de": ["Bash-Befehl, um alle .log-Dateien älter als 7 Tage zu löschen", "Wie ändere ich den Besitzer "
               "rekursiv mit chown?"],
        "fr": ["commande pour trouver les fichiers modifiés aujourd'hui", "script bash qui renomme tous les .jpeg en "
               ".jpg"],
        "pt": ["como listar as portas abertas no linux?"], "zh": ["用shell统计一个文件夹里有多少行代码",
                                                                 "git怎么撤销上一次提交？"],
        "ja": ["ディレクトリ内の大きいファイルを探すコマンドは？"], "ru": ["как найти все файлы больше 100 МБ в linux?"],
    }
    fix = {
        "en": ["this script breaks on filenames with spaces, fix it", "is this safe to run?", "improve this script",
               "explain what this does"],
        "es": ["¿qué hace este script?"], "de": ["Was macht dieses Skript?"], "zh": ["这个脚本有什么问题？"],
    }
    items = [Item("shell", T, lang, user(casing(rng, a)), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, bare, 42)]
    items += [Item("shell", T, lang, user(_with_code(rng, a, rng.choice(SHELL), "bash")), out_tokens(rng, T))
              for lang, a in asks_by_lang(rng, fix, 15)]
    return items


@family("config_devops", T, "config files: nginx, docker, Kubernetes, CI, systemd")
def config_devops(rng: random.Random) -> list[Item]:
    pasted = {
        "en": ["add HTTPS to this {k} config", "what's wrong with this {k} file? it won't start",
               "add a health check to this", "can you add a redis service?", "explain this {k} config",
               "make this {k} config production ready"],
        "es": ["añade un servicio de redis a este {k}"], "de": ["Was ist an dieser {k}-Konfiguration falsch?"],
        "fr": ["ajoute HTTPS à cette config {k}"], "zh": ["这个{k}配置有什么问题？"], "ru": ["что не так с этим {k} конфигом?"],
    }
    bare = {
        "en": ["write a Dockerfile for a Node app", "systemd unit file for a python script that should restart on "
               "failure", "docker-compose with postgres and a flask app", "GitHub Actions workflow that runs tests on "
               "every PR", "Kubernetes CronJob that runs every night at 2am", "nginx config to redirect http to https"],
        "es": ["escríbeme un Dockerfile para una app de Django"], "de": ["Schreib ein Dockerfile für eine Go-App"],
        "fr": ["un fichier docker-compose avec postgres et redis"], "zh": ["写一个部署Spring Boot的Dockerfile"],
        "ja": ["Node.js用のDockerfileを書いて"],
    }
    items = []
    for lang, a in asks_by_lang(rng, pasted, 22):
        kind, cfg = rng.choice(CONFIGS)
        items.append(Item("config_devops", T, lang, user(_with_code(rng, casing(rng, a.format(k=kind)), cfg, "yaml")),
                          out_tokens(rng, T)))
    items += [Item("config_devops", T, lang, user(casing(rng, a)), out_tokens(rng, T))
              for lang, a in asks_by_lang(rng, bare, 18)]
    return items


_EMAILS = [
    "Hi team, please note that invoice #INV-2291 for 1,480.00 EUR from Nordlicht GmbH is due on 15 March. "
    "Contact: Jana Weber, jana.weber@nordlicht.example, +49 30 1234567. Thanks, Tom",
    "Order confirmation: 2x Trail Running Shoes (size 42) at $89.99, 1x Water Bottle at $12.50, shipping $5.00. "
    "Ship to: Maria Lopez, 44 Oak Street, Portland, OR 97205. Order placed 2024-05-02.",
    "Dear Dr. Chen, your appointment is confirmed for Tuesday 9 July at 14:30 at the Riverside Clinic, room 12. "
    "Please bring your insurance card (policy no. RX-88120).",
    "Estimado cliente: su reserva en el Hotel Mar Azul del 3 al 7 de agosto (habitación doble, 4 noches, 520 €) "
    "ha sido confirmada. Localizador: MZ7781.",
    "Sehr geehrte Frau Klein, Ihre Bestellung Nr. 55102 (3 Stühle, 1 Tisch) wird am 22.06. zwischen 8 und 12 Uhr "
    "geliefert. Gesamtbetrag: 749,00 €.",
]


@family("structured_extraction", T, "extract fields from a text into JSON or a table")
def structured_extraction(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Extract the name, email, amount and due date from this as JSON:", "pull out all the dates and amounts "
               "into a table", "Give me a JSON object with the order items (name, qty, price) from this text",
               "extract every person and organisation mentioned, as a JSON list", "Parse this into {{\"customer\", "
               "\"address\", \"total\"}}", "turn this email into a structured record: sender, topic, deadline, "
               "action items"],
        "es": ["Extrae en JSON el nombre del hotel, las fechas y el precio:", "saca los datos en una tabla"],
        "de": ["Extrahiere Bestellnummer, Datum und Betrag als JSON:", "Bitte die Daten strukturiert als Tabelle"],
        "fr": ["Extrais les informations (nom, date, montant) au format JSON :"], "pt": ["extraia os campos em JSON:"],
        "zh": ["从下面文字中提取姓名、日期和金额，输出JSON："], "ja": ["次の文章から日付と金額を抽出してJSONで出力して"],
        "ru": ["извлеки имя, дату и сумму в формате JSON:"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 50):
        src = " ".join(rng.sample(_EMAILS, rng.randint(1, 3)))
        items.append(Item("structured_extraction", T, lang, user(f"{a}\n\n{src}"), out_tokens(rng, T)))
    return items


@family("summarize_pages", T, "summaries of a few pages of text")
def summarize_pages(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Summarize this document in 5 bullet points", "can you summarize the following report for my boss?",
               "tl;dr of this whole thing please, key decisions and numbers", "Write an executive summary of this",
               "summarize each section in one or two sentences", "What are the main takeaways?"],
        "es": ["Resume este documento en cinco puntos", "hazme un resumen del informe"],
        "de": ["Fasse dieses Dokument in fünf Stichpunkten zusammen", "Zusammenfassung bitte"],
        "fr": ["Fais un résumé de ce document", "résume en quelques points clés"],
        "pt": ["Resuma este documento em tópicos"], "it": ["Riassumi questo documento"],
        "zh": ["总结一下这份文件的要点", "请把这篇报告概括成几条要点"], "ja": ["この文書を要約してください"],
        "ru": ["сделай краткое содержание документа"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 45):
        doc = long_document(rng, lang if lang in PARAGRAPHS and rng.random() < 0.7 else "en", rng.randint(5, 25))
        text = f"{a}\n\n{doc}" if rng.random() < 0.5 else f"{doc}\n\n{a}"
        items.append(Item("summarize_pages", T, lang, user(text), out_tokens(rng, T)))
    return items


@family("doc_analysis", T, "analysis of a few pages: compare, pros and cons, risks, sentiment by section")
def doc_analysis(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["What are the risks mentioned in this and how serious are they?", "List the pros and cons of the plan "
               "described below", "Compare the two reports below: what changed?", "What questions should I ask at the "
               "meeting based on these notes?", "Which of these points would a tenant push back on?",
               "Find inconsistencies between the numbers in this text"],
        "es": ["¿Qué ventajas e inconvenientes tiene el plan descrito?", "Analiza este informe y dime los riesgos"],
        "de": ["Welche Risiken nennt der Text?", "Vergleiche die beiden Berichte"],
        "fr": ["Quels sont les avantages et inconvénients de ce projet ?"], "zh": ["分析一下这份报告中的风险"],
        "ja": ["この報告書の問題点を挙げてください"], "ru": ["какие риски упоминаются в этом тексте?"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 35):
        doc = long_document(rng, lang if lang in PARAGRAPHS else "en", rng.randint(3, 12))
        items.append(Item("doc_analysis", T, lang, user(f"{a}\n\n{doc}"), out_tokens(rng, T)))
    return items


@family("math_word", T, "math word problems and multi-step calculations")
def math_word(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["A train leaves at 9:15 going 80 km/h and another at 10:00 going 120 km/h on the same track. When does "
               "the second catch up?", "If I invest 5,000 at 4% compounded monthly, how much after 7 years?",
               "A shirt costs $36 after a 25% discount. What was the original price?", "I have 3 red, 5 blue and 2 "
               "green marbles. If I draw two without replacement, what's the chance both are blue?",
               "A recipe for 4 needs 300 g flour and 2 eggs; how much for 10 people?", "solve for x: 3x + 7 = 2x - 5 "
               "and then check it", "A tank fills in 6 hours with pipe A and 4 with pipe B. Both open, how long?",
               "What's the monthly payment on a 250k mortgage at 5.5% over 30 years?", "If the average of 5 numbers is "
               "12 and four of them are 10, 11, 14 and 9, what is the fifth?", "A rectangle's length is 3 more than "
               "twice its width and the perimeter is 54. Find the sides.", "how many ways can 6 people sit at a round "
               "table?", "My salary went up 8% then down 5%. Net change?", "A car uses 6.5 L per 100 km. Fuel is 1.89 "
               "per liter. Cost of a 430 km trip?", "find the derivative of x^3 * sin(x)", "integrate 2x e^(x^2) dx",
               "Three friends split a bill of 147.60 with a 15% tip; one of them only had a salad for 12. What does "
               "everyone pay if the salad person pays exactly their share plus tip?", "A phone plan is $25/month "
               "plus $0.10 per MB over 2 GB. I used 3.4 GB. What's my bill, and at what usage would the $40 "
               "unlimited plan be cheaper?", "A population grows 3% a year. How many years until it doubles? "
               "show the steps", "If a pizza of 30 cm diameter costs 9 and one of 40 cm costs 14, which is the "
               "better deal per square cm?", "I run 5 km in 27:30. What pace per km and per mile is that, and "
               "what would my half marathon time be at the same pace?", "A loan of 12,000 at 6.9% APR over 4 "
               "years: monthly payment and total interest?", "Two dice are rolled. Given that the sum is even, "
               "what's the probability that both show a 3 or higher?", "The angles of a triangle are in the ratio "
               "2:3:4. Find them and say what kind of triangle it is", "A store marks up goods 40% and then "
               "offers 20% off. What's the actual margin on cost?", "Water flows in at 12 L/min and drains at "
               "7 L/min from a 500 L tank that's 20% full. When is it full?", "how many handshakes if 23 people "
               "all shake hands once? and why", "Solve the system: 2x + 3y = 12, 5x - y = 13"],
        "es": ["Un tren sale a las 8 a 90 km/h y otro a las 9 a 120 km/h. ¿Cuándo lo alcanza?", "Si ahorro 200 € al mes "
               "al 3 % anual, ¿cuánto tendré en 10 años?", "Resuelve: 2x² - 8x + 6 = 0", "Tres amigos pagan una cena "
               "de 96 € con un 10 % de propina; uno solo tomó un postre de 7 €. ¿Cuánto paga cada uno?",
               "Un grifo llena un depósito en 5 horas y otro lo vacía en 8. Si ambos están abiertos, ¿cuánto tarda?"],
        "de": ["Ein Pullover kostet nach 30 % Rabatt 42 €. Was war der ursprüngliche Preis?", "Wie groß ist die "
               "Wahrscheinlichkeit, mit zwei Würfeln eine Summe von 8 zu werfen?", "Ein Kredit über 15.000 € zu 5,5 % "
               "auf 5 Jahre: wie hoch ist die Monatsrate und wie viel Zinsen zahle ich insgesamt?",
               "Löse das Gleichungssystem: 3x - y = 7 und x + 2y = 7"],
        "fr": ["Un robinet remplit une baignoire en 12 minutes et un autre en 18. Ensemble, combien de temps ?",
               "Calcule les intérêts de 10 000 € à 3 % sur 5 ans, composés annuellement.", "Un cycliste roule à "
               "18 km/h à l'aller et 24 km/h au retour. Quelle est sa vitesse moyenne ? Explique pourquoi ce n'est "
               "pas 21."],
        "pt": ["Se 3 pedreiros fazem um muro em 12 dias, quantos dias levam 4 pedreiros?"],
        "it": ["Un'auto percorre 240 km in 3 ore. A che velocità media andava e quanto impiega per 400 km?"],
        "zh": ["鸡兔同笼，共有35个头，94只脚，鸡和兔各有多少只？", "一件商品打八折后是240元，原价是多少？",
               "小明存了5万元，年利率3%，按月复利，5年后有多少钱？请写出计算过程", "一个水池有进水管和出水管，单开进水管6小时注满，单开出水管8小时放完，同时打开多久注满？",
               "甲乙两人相距30公里，相向而行，甲每小时5公里，乙每小时7公里，几小时相遇？"],
        "ja": ["時速60kmで2時間半走ると何km進みますか？その後時速80kmで残り100kmを走ると合計何時間？"],
        "ru": ["Поезд прошёл 300 км за 4 часа, а обратно на час быстрее. Какова средняя скорость?",
               "Реши уравнение: x² - 5x + 6 = 0", "Вклад 100 000 рублей под 8% годовых с ежемесячной "
               "капитализацией. Сколько будет через 3 года?"],
        "ko": ["기차가 시속 80km로 2시간 15분을 달렸습니다. 이동 거리는 얼마이고, 같은 거리를 시속 100km로 가면 몇 분이 걸리나요?"],
    }
    return [Item("math_word", T, lang, user(casing(rng, a)), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, asks, 60)]


@family("multistep_plan", T, "multi-step instructions and plans: itineraries, study plans, migrations, setups")
def multistep_plan(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Plan a 5-day itinerary for Tokyo on a mid budget, with one day trip", "Give me step-by-step "
               "instructions to set up a home mesh wifi network", "Make a 12-week training plan for my first half "
               "marathon, I can run 3 times a week", "How do I move my email from Gmail to Fastmail without losing "
               "anything? Steps please", "plan a week of vegetarian dinners with a shopping list",
               "Create a study schedule for the bar exam, 10 weeks, 20 hours a week", "Step by step: how do I file my "
               "taxes as a freelancer in the UK", "organize a birthday party for 15 kids, timeline and budget",
               "I'm moving abroad in 3 months. Make me a checklist with deadlines",
               "Steps to set up a small online shop: legal, payments, shipping", "Plan a 3-day Rome trip with kids "
               "who hate museums", "How do I set up automatic backups of my family photos from three phones to a NAS "
               "and the cloud? Walk me through it", "Plan my week: I have 3 deadlines, a dentist appointment, gym 3x "
               "and want 2 evenings free. Here are the details: report due Wed, slides due Thu, invoice Fri",
               "Give me a step-by-step plan to paint a room, from buying supplies to cleanup, for a total beginner",
               "Steps to apply for a Schengen visa from India, with documents and timing",
               "Make an onboarding plan for a new junior designer's first two weeks",
               "plan a zero-waste week for a family of four with a shopping list and prep schedule",
               "How do I switch my small office from personal Gmail accounts to Google Workspace with our own "
               "domain? Detailed steps in order", "Build me a 4-week beginner strength routine, 3 days a week, "
               "no gym, with progressions"],
        "es": ["Planifica un viaje de 7 días por Andalucía en coche", "Dame un plan de estudio de 8 semanas para el "
               "examen B2 de inglés", "pasos para montar una tienda online"],
        "de": ["Erstelle einen Trainingsplan für 10 km in 8 Wochen", "Schritt für Schritt: Wie melde ich ein Gewerbe an?",
               "Plane eine Woche Toskana mit Kindern"],
        "fr": ["Organise un week-end de trois jours à Lisbonne", "Donne-moi les étapes pour déménager à l'étranger"],
        "pt": ["Monte um roteiro de 4 dias no Rio de Janeiro", "plano de estudos para o ENEM em 3 meses"],
        "it": ["Organizza un itinerario di 5 giorni in Sicilia"],
        "zh": ["帮我规划一个五天的成都旅行行程", "制定一个三个月的雅思备考计划", "一步一步教我搭建家庭NAS"],
        "ja": ["京都3日間の旅行プランを立ててください", "TOEIC対策の2ヶ月学習計画を作って"],
        "ru": ["Составь план путешествия по Грузии на неделю", "пошаговый план подготовки к марафону",
               "Пошагово: как перенести сайт на WordPress на другой хостинг без простоя?"],
        "ko": ["서울에서 3박 4일 부산 여행 일정을 짜 주세요. 예산은 50만원입니다"],
    }
    return [Item("multistep_plan", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 50)]


@family("concept_explain_tech", T, "explain how a technical concept works, at tutorial depth")
def concept_explain_tech(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["explain how HTTPS works", "What is a closure in JavaScript? with an example",
               "difference between a process and a thread", "How does git rebase differ from merge?",
               "what's the difference between TCP and UDP and when to use which", "Explain Big-O notation with "
               "examples", "how do database indexes work", "What is dependency injection and why would I use it?",
               "explain async/await in Python", "What's a race condition?", "how does DNS resolution work",
               "what is the event loop in node", "When should I use a hash map vs a tree map?",
               "explain REST vs GraphQL", "how does garbage collection work in Java?", "What is a monad, "
               "practically, for a JavaScript dev?", "Explain how a hash table handles collisions",
               "what happens when I type a URL in the browser, in detail", "how does OAuth2 authorization code "
               "flow work?", "Explain the CAP theorem with examples", "what is memoization and when is it useful",
               "How does JWT authentication work and what are the pitfalls?", "explain virtual memory and paging",
               "What's the difference between a mutex and a semaphore?", "how do CSS flexbox and grid differ?",
               "Explain what a Docker image layer is"],
        "es": ["¿Qué es una closure en JavaScript?", "Explícame la diferencia entre proceso e hilo",
               "¿cómo funcionan los índices en una base de datos?"],
        "de": ["Wie funktioniert HTTPS?", "Was ist der Unterschied zwischen TCP und UDP?", "Erklär mir Docker vs. VM"],
        "fr": ["Explique-moi comment fonctionne le DNS", "C'est quoi une promesse en JavaScript ?"],
        "pt": ["Explique o que é injeção de dependência"], "it": ["Spiegami come funziona Git"],
        "zh": ["解释一下什么是闭包", "进程和线程有什么区别？", "数据库索引的原理是什么？"],
        "ja": ["非同期処理とは何ですか？例を挙げて説明して"], "ru": ["объясни, как работает HTTPS", "что такое замыкание в JS?"],
    }
    return [Item("concept_explain_tech", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 48)]


@family("constrained_writing", T, "emails, letters and texts with several explicit requirements")
def constrained_writing(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Write a formal complaint to my landlord about the broken heating: mention the three emails I sent "
               "(3, 10 and 17 Jan), ask for a repair within 7 days, stay polite, under 200 words",
               "Write a cover letter for a junior data analyst job. Mention SQL, Tableau and my retail background, "
               "one page max, confident but not arrogant", "Draft a product description for noise-cancelling "
               "headphones: 3 bullet points, one sentence about battery life, no superlatives",
               "write a LinkedIn post announcing I'm leaving my job, thank my team, mention I'm starting a PhD, no "
               "hashtags", "Write a refund request email in a firm tone, include order number 88231 and the date of "
               "delivery, and ask for a reply within 5 working days", "Write a 150-word bio for a conference, third "
               "person, mention 10 years in climate research and two books",
               "Write a polite but firm email asking my manager for a raise: mention the two projects I led, the "
               "market rate I found, and suggest a meeting next week. Max 180 words.",
               "write an apology email to a customer whose order arrived broken: offer a replacement or refund, "
               "include a 15% voucher code SORRY15, keep it warm and short",
               "Draft meeting minutes from these bullet points with decisions, owners and deadlines in a table: "
               "budget approved, Lea owns hiring by May, launch moved to June, Tom to fix the billing bug",
               "Write a job ad for a part-time bookkeeper: 20 h/week, hybrid, Xero experience, mention our values "
               "(honesty, calm, humour) and a salary range, under 250 words",
               "Write a speech for my parents' 40th anniversary, 2 minutes, funny but touching, mention the camping "
               "trip in 1991 and their garden", "Write an out-of-office reply in English and Spanish, mention "
               "who to contact for urgent billing questions and my return date (3 June)",
               "Compose a reference letter for my former intern: punctual, strong in Excel, improved our "
               "reporting process, recommend her for a graduate programme",
               "Write instructions for our cleaner in simple English: which rooms, what products, what not to "
               "touch, and where the key is; numbered list"],
        "es": ["Redacta una carta formal al ayuntamiento quejándote del ruido de obras: menciona fechas, pide una "
               "solución en 15 días y mantén un tono educado, máximo 200 palabras"],
        "de": ["Schreib ein Kündigungsschreiben für meinen Fitnessstudio-Vertrag zum nächstmöglichen Termin, mit "
               "Bitte um schriftliche Bestätigung und Widerruf der Einzugsermächtigung"],
        "fr": ["Rédige une lettre de motivation pour un stage en marketing : trois paragraphes, mentionne mon "
               "Erasmus en Espagne et mon goût pour l'analyse de données"],
        "zh": ["帮我写一封给房东的正式邮件，说明暖气坏了，列出之前三次联系的时间，要求一周内维修，语气礼貌，不超过300字"],
        "ja": ["取引先へのお詫びメールを書いてください。納品遅延の理由、新しい納期、再発防止策を含めて、丁寧な敬語で"],
        "ru": ["Напиши официальное письмо в управляющую компанию о протечке крыши: укажи даты обращений, потребуй "
               "ремонт в течение 10 дней, вежливо", "Составь объявление о вакансии бухгалтера на полставки: "
               "требования, условия, зарплатная вилка, не больше 200 слов"],
        "pt": ["Escreva um e-mail pedindo aumento ao meu chefe: cite os dois projetos que liderei, o salário de "
               "mercado e proponha uma reunião, no máximo 150 palavras"],
        "it": ["Scrivi una lettera di reclamo alla compagnia aerea per il bagaglio perso: numero di volo AZ610, "
               "data 4 maggio, chiedi un rimborso di 320 euro entro 30 giorni, tono fermo ma cortese"],
    }
    return [Item("constrained_writing", T, lang, user(a), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 34)]


_CSV = """date,region,product,units,revenue
2024-01-03,North,Widget,12,240.00
2024-01-03,South,Gadget,5,375.00
2024-01-04,North,Gadget,7,525.00
2024-01-05,East,Widget,20,400.00
2024-01-05,South,Widget,9,180.00
2024-01-06,East,Gizmo,3,297.00
2024-01-07,North,Gizmo,4,396.00
2024-01-08,South,Gadget,11,825.00"""


_TABLE2 = """| month | visitors | signups | paid |
|-------|----------|---------|------|
| Jan   | 12,400   | 610     | 44   |
| Feb   | 11,900   | 655     | 51   |
| Mar   | 15,800   | 702     | 49   |
| Apr   | 16,100   | 880     | 73   |
| May   | 14,250   | 910     | 81   |"""


@family("data_questions", T, "questions that need calculations over a pasted table")
def data_questions(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Which region had the highest revenue per unit?", "total revenue per product please, and the share of "
               "each", "what's the average order size by region?", "Spot any anomalies in this data",
               "make a pivot: regions as rows, products as columns, revenue", "compute the conversion rate at each "
               "step per month and tell me which month was best", "what's the month-over-month growth, and is the "
               "trend real or noise?", "Calculate the mean, median and standard deviation of the main numeric "
               "column", "If the trend continues, estimate next month's figures and explain the method"],
        "es": ["¿Qué región facturó más? Calcula también la media por unidad"], "de": ["Umsatz pro Produkt und "
               "Region als Tabelle, bitte"], "fr": ["Quel produit rapporte le plus ? Détaille le calcul"],
        "zh": ["按地区汇总收入，并算出每个产品的占比"], "ru": ["посчитай выручку по регионам"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 28):
        table = rng.choice([_CSV, _TABLE2])
        items.append(Item("data_questions", T, lang, user(f"{a}\n\n{table}" if rng.random() < 0.5 else f"{table}\n\n{a}"),
                          out_tokens(rng, T)))
    return items


TOOLS_SIMPLE = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather and forecast for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                                                      "days": {"type": "integer"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "search_flights", "description": "Search flights between two airports",
                                      "parameters": {"type": "object", "properties": {
                                          "from": {"type": "string"}, "to": {"type": "string"},
                                          "date": {"type": "string"}}, "required": ["from", "to", "date"]}}},
    {"type": "function", "function": {"name": "create_event", "description": "Add an event to the user's calendar",
                                      "parameters": {"type": "object", "properties": {
                                          "title": {"type": "string"}, "start": {"type": "string"},
                                          "duration_min": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "query_orders", "description": "Look up orders in the shop database",
                                      "parameters": {"type": "object", "properties": {
                                          "customer_email": {"type": "string"}, "status": {"type": "string"}}}}},
]


@family("tool_use", T, "requests that come with function tools to call")
def tool_use(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["What's the weather in Lisbon this weekend? Should I pack a jacket?", "find me a flight from BER to MAD "
               "next friday", "put a 30 min call with Ana tomorrow at 3pm in my calendar", "did order for "
               "jo@example.com ship yet?", "book the cheapest flight to Rome on the 12th and add it to my calendar",
               "check the weather in Oslo and Bergen for the next 3 days and tell me where it's drier",
               "list all open orders for mark@shop.example and cancel reminders for the shipped ones",
               "is it going to snow in Innsbruck on saturday?", "Schedule 'dentist' next Tuesday 8:30, 45 minutes",
               "any flights LHR to JFK on June 3rd?", "how many orders does anna@shop.example have that are still "
               "pending?", "Check if it'll rain in Paris during my trip (14th-16th) and put 'pack umbrella' in my "
               "calendar the evening before if so", "Find a flight to Barcelona on Friday after 5pm and tell me "
               "the weather there for the weekend", "what's the forecast for Tokyo for the next 5 days?",
               "add lunch with Priya on Thursday at noon", "which of my orders haven't shipped? email is "
               "li.wei@mail.example"],
        "es": ["¿Qué tiempo hará en Sevilla mañana?", "busca vuelos de Madrid a Lima para el 3 de marzo"],
        "de": ["Wie wird das Wetter morgen in Hamburg?", "Trag mir einen Termin am Montag um 10 Uhr ein"],
        "fr": ["Quel temps fera-t-il à Lyon ce week-end ?"], "pt": ["Qual a previsão do tempo para São Paulo amanhã?"],
        "zh": ["查一下明天上海的天气", "帮我订下周五北京到成都的航班"], "ja": ["明日の大阪の天気を調べて"],
        "ru": ["Какая погода будет в Москве на выходных?", "Найди рейс из Москвы в Казань на пятницу"],
        "it": ["Che tempo fa a Milano domani?"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 45):
        tools = rng.sample(TOOLS_SIMPLE, rng.randint(1, len(TOOLS_SIMPLE)))
        items.append(Item("tool_use", T, lang, user(a), out_tokens(rng, T) // 2, tools=tools))
    return items


@family("text_edit_long", T, "edit a long text to requirements: shorten a few pages, change register, restructure")
def text_edit_long(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Rewrite this for a newsletter: friendlier tone, half the length, keep all the numbers",
               "Turn these notes into a formal report with headings", "Make this accessible for 12-year-olds",
               "rewrite as an FAQ with 6 questions", "Restructure this into sections with headings and a short intro"],
        "es": ["Reescribe este texto para un boletín, más corto y cercano"], "de": ["Schreib den Text für Kinder "
               "um, halb so lang"], "fr": ["Transforme ces notes en compte rendu formel"], "zh": ["把这篇文字改写成正式的报告格式"],
        "ru": ["перепиши текст в официальном стиле и сократи вдвое"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 30):
        doc = long_document(rng, lang if lang in PARAGRAPHS else "en", rng.randint(3, 10))
        items.append(Item("text_edit_long", T, lang, user(f"{a}\n\n{doc}"), out_tokens(rng, T)))
    return items


@family("library_howto", T, "how to do something with a named library or framework, no code pasted")
def library_howto(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["how do I merge two pandas dataframes on columns with different names?", "axios post request with "
               "custom headers and a timeout, example?", "In Django, how do I add a unique constraint on two fields?",
               "react: how to fetch data on mount and show a spinner", "SQLAlchemy: eager load a relationship to "
               "avoid N+1", "how to mock datetime.now in pytest", "Spring Boot: how do I read a list from "
               "application.yml?", "numpy: find the indices of the 3 largest values", "how to set a cookie in "
               "express with httpOnly and secure", "matplotlib: two y axes on the same plot?", "Tailwind: center a div "
               "vertically and horizontally", "how to stream a large file download with requests in python",
               "Go: how do I cancel an http request with context?", "Rust serde: rename a field when deserializing",
               "how to use useMemo correctly in React", "EF Core: how to do a left join with LINQ",
               "Kotlin coroutines: run two network calls in parallel and wait for both", "jq: select objects where "
               "a field contains a string", "Terraform: create an S3 bucket with versioning", "How do I paginate "
               "with the GitHub API in Python?", "flask: return a CSV file as a download", "tokio: spawn a task "
               "and get its result", "pandas: fill missing values with the group mean", "how do I use git bisect"],
        "es": ["¿cómo uno dos DataFrames de pandas por columnas con nombres distintos?", "en Django, ¿cómo hago una "
               "restricción única sobre dos campos?", "react: cómo hacer fetch al montar el componente"],
        "de": ["Wie mache ich in pandas einen Merge über Spalten mit unterschiedlichen Namen?", "Spring Boot: Wie "
               "lese ich eine Liste aus der application.yml?", "Wie benutze ich useEffect richtig?"],
        "fr": ["Comment fusionner deux DataFrames pandas sur des colonnes aux noms différents ?", "Express : comment "
               "définir un cookie httpOnly ?"],
        "pt": ["como fazer um left join no pandas?", "no Flutter, como faço uma lista com rolagem infinita?"],
        "zh": ["pandas怎么按不同列名合并两个DataFrame？", "Vue3里怎么监听路由变化？", "Spring Boot怎么读取yml里的列表配置？"],
        "ja": ["pandasで列名が違う2つのDataFrameを結合するには？", "Reactでマウント時にデータを取得する方法は？"],
        "ru": ["как в pandas объединить два датафрейма по колонкам с разными именами?", "как в Django сделать "
               "уникальное ограничение на два поля?"],
    }
    return [Item("library_howto", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 50)]


@family("spreadsheet_formulas", T, "Excel / Google Sheets formulas and pivot questions")
def spreadsheet_formulas(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["excel formula to look up a price from another sheet by product code", "Google Sheets: count cells "
               "that contain 'paid' in column D", "how do I sum column C only where column A is 'North' and B is "
               "after Jan 1?", "formula to get the last non-empty value in a column", "INDEX MATCH with two criteria?",
               "conditional formatting to highlight duplicates across two columns", "Sheets formula that splits "
               "'Last, First' into two columns", "excel: calculate working days between two dates excluding "
               "holidays in a list", "how do I make a dropdown that depends on another dropdown?",
               "VLOOKUP returns #N/A even though the value is there, why?", "formula for a running balance that "
               "resets every month", "ARRAYFORMULA to number rows automatically when column B is filled"],
        "es": ["fórmula de Excel para buscar un precio en otra hoja por código", "¿cómo cuento celdas que contienen "
               "'pagado' en Google Sheets?"],
        "de": ["Excel-Formel: Summe von Spalte C, wenn A = 'Nord' ist", "SVERWEIS liefert #NV, warum?"],
        "fr": ["formule Excel pour rechercher un prix dans une autre feuille", "RECHERCHEV renvoie #N/A, pourquoi ?"],
        "pt": ["fórmula do Excel para somar valores com duas condições"], "zh": ["Excel里怎么用两个条件做INDEX MATCH？",
                                                                        "VLOOKUP返回#N/A但是值明明存在，为什么？"],
        "ja": ["Excelで2つの条件で合計する数式は？"], "ru": ["формула Excel для суммы по двум условиям"],
    }
    return [Item("spreadsheet_formulas", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 30)]


@family("unit_tests_paste", T, "write tests for pasted code")
def unit_tests_paste(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["write unit tests for this", "Can you add pytest tests covering the edge cases?", "tests for this "
               "function please, including the error paths", "write a table-driven test for this", "how would you "
               "test this? write the tests", "add jest tests"],
        "es": ["escribe tests unitarios para esto"], "de": ["Schreib Unit-Tests dafür"], "fr": ["écris des tests "
               "unitaires pour ce code"], "zh": ["给这段代码写单元测试"], "ja": ["このコードのユニットテストを書いて"],
        "ru": ["напиши тесты для этой функции"], "pt": ["escreva testes para essa função"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 35):
        s = rng.choice(SNIPPETS)
        items.append(Item("unit_tests_paste", T, lang, user(_with_code(rng, a, s.code, s.lang)), out_tokens(rng, T)))
    return items
