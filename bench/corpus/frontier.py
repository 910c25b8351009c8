"""Frontier-tier families: system design and trade-off analysis (short asks and over large context), proofs
and derivations, research-grade questions, high-stakes reasoning, hard algorithm design, deep debugging and
audits of large code."""

from __future__ import annotations

import random

from .code import SNIPPETS, TRACES, fence
from .items import Item, asks_by_lang, casing, family, out_tokens, user
from .prose import long_document

T = "frontier"

_FILES = ["src/store.go", "src/api/handlers.py", "lib/cache.ts", "internal/ledger/fold.rs", "app/services/billing.rb",
          "server/routes/orders.js", "core/scheduler.kt", "pkg/queue/worker.go", "backend/auth/session.py",
          "src/main/java/com/shop/OrderService.java"]


def repo_dump(rng: random.Random, files: int) -> str:
    """Several source files pasted one after another, the way people paste a repository into a chat."""
    parts = []
    for path in rng.sample(_FILES, min(files, len(_FILES))):
        s = rng.choice(SNIPPETS)
        body = "\n\n".join(rng.choice(SNIPPETS).code for _ in range(rng.randint(1, 3)))
        parts.append(f"### {path}\n{fence(s.code + chr(10) + chr(10) + body, s.lang)}")
    return "\n\n".join(parts)


@family("system_design_short", T, "one- or two-line system design asks at scale, with trade-offs")
def system_design_short(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Design a globally distributed rate limiter for an API with 50M users; discuss consistency vs latency",
               "how would you design a payments ledger that never double-charges across regions? trade-offs please",
               "Design the backend for a Google Docs-style collaborative editor. CRDT or OT, and why?",
               "Architect a multi-tenant SaaS on Postgres for 10k tenants: schema-per-tenant vs shared tables vs "
               "sharding, with the failure modes of each", "Design a notification system that sends 100M push "
               "messages a day with per-user rate limits and exactly-once delivery semantics where possible",
               "We need to migrate a 40 TB MySQL database to a new region with under a minute of downtime. Plan it "
               "and explain the risks", "design a real-time leaderboard for a game with 5 million concurrent players",
               "How would you build a feature store that serves both batch training and sub-10ms online inference? "
               "Compare three architectures", "Design an event-sourced order system; how do you handle schema "
               "evolution, replays and GDPR deletion?", "what's the best architecture for a search engine over 2 "
               "billion documents with typo tolerance and per-user permissions, and what would you trade off?",
               "Design a distributed job scheduler that survives datacenter loss and never runs a job twice",
               "How would you build a privacy-preserving analytics pipeline with differential privacy for 100M "
               "users? Where do you spend the privacy budget and why?", "Design a metering and billing system for "
               "an API platform that is accurate to the cent under retries, refunds and clock skew",
               "Architect an LLM serving platform for 50 models on a shared GPU pool: batching, routing, isolation "
               "and cost trade-offs",
               "Compare Raft, Paxos and viewstamped replication for a 5-node metadata store under network partitions",
               "We run 300 microservices and deploys break each other weekly. Propose a release architecture (contract "
               "tests, canaries, versioning) and argue which failures it can and cannot catch",
               "Design the data platform for a bank: CDC from 40 Oracle databases into a lakehouse with row-level "
               "lineage, GDPR erasure and sub-hour freshness. What are the hard parts?",
               "design an offline-first mobile sync protocol with conflict resolution for shared shopping lists; "
               "analyse the edge cases", "How would you shard a social graph with 3 billion edges so that "
               "friends-of-friends queries stay under 50 ms? Evaluate the partitioning options",
               "Design a video transcoding pipeline that scales from 10 to 10,000 uploads per minute at minimum cost, "
               "and explain what you'd sacrifice first under load", "what would a zero-trust architecture look "
               "like for a 2,000-person company with legacy on-prem apps? Migration order and risks",
               "Design a fraud detection system that decides in 80 ms per card payment, retrains daily and can "
               "explain declines to regulators", "Our monolith's Postgres is at 90% CPU. Should we shard, split "
               "services, add read replicas or cache? Reason through it with numbers I can plug in",
               "Design an exactly-once stream processing job that joins clicks and purchases arriving up to 2 hours "
               "late, and explain the watermark trade-offs", "Design a multi-region Kubernetes setup with failover "
               "under 30 s for stateful services; what breaks, and how do you test it?"],
        "es": ["Diseña un sistema de pagos multi-región que nunca cobre dos veces; analiza las compensaciones entre "
               "consistencia y latencia", "¿Cómo diseñarías un limitador de tasa distribuido para 50 millones de "
               "usuarios? Compara alternativas"],
        "de": ["Entwirf ein verteiltes Buchungssystem für Flugtickets, das Überbuchungen verhindert, und diskutiere "
               "die Trade-offs zwischen Konsistenz und Verfügbarkeit", "Wie würdest du einen Chat-Dienst für 100 "
               "Millionen Nutzer mit Ende-zu-Ende-Verschlüsselung und Mehrgeräte-Sync architektonisch aufbauen?"],
        "fr": ["Conçois l'architecture d'un moteur de recommandation temps réel pour 20 millions d'utilisateurs, en "
               "comparant au moins trois approches", "Comment concevoir un registre de paiements multi-région sans "
               "double débit ? Détaille les compromis"],
        "pt": ["Projete um sistema de mensageria com entrega exatamente uma vez entre data centers e discuta os "
               "trade-offs"],
        "it": ["Progetta un sistema di prenotazione distribuito che eviti l'overbooking, valutando i compromessi tra "
               "coerenza e disponibilità"],
        "zh": ["设计一个支持五千万用户的全球分布式限流系统，并分析一致性和延迟之间的权衡", "如何设计一个跨地域不重复扣款的支付账本？请比较不同方案",
               "设计一个支持百万并发的实时排行榜系统，说明各个方案的优缺点"],
        "ja": ["5000万ユーザー規模の分散レートリミッタを設計し、一貫性とレイテンシのトレードオフを論じてください",
               "複数リージョンで二重課金しない決済台帳をどう設計しますか？"],
        "ru": ["Спроектируй распределённую систему бронирования без овербукинга и разбери компромиссы между "
               "согласованностью и доступностью", "Как бы ты построил платёжный реестр в нескольких регионах без "
               "двойных списаний?"],
        "ko": ["5천만 사용자를 위한 분산 레이트 리미터를 설계하고 일관성과 지연 시간의 트레이드오프를 분석해 주세요"],
    }
    return [Item("system_design_short", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 70)]


@family("architecture_review_large", T, "architecture review and redesign over many pasted files")
def architecture_review_large(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Here's most of our service. Review the architecture: where will it break at 10x traffic, and what "
               "would you restructure first? Justify the trade-offs.", "We keep getting data races and duplicated "
               "work between these modules. Propose a new design for the concurrency model and migration steps.",
               "Do a deep review of this codebase's error handling and state management across files and suggest a "
               "coherent redesign", "Given these files, design a plugin system so third parties can add payment "
               "providers without touching core, and explain what you'd change in each file"],
        "es": ["Revisa la arquitectura de este servicio: ¿dónde fallará con 10 veces más tráfico y qué "
               "reestructurarías primero? Justifica las decisiones."],
        "de": ["Hier ist unser Dienst. Bewerte die Architektur, finde die Engpässe bei zehnfacher Last und schlage "
               "ein Redesign mit Migrationsplan vor."],
        "fr": ["Voici notre code. Analyse l'architecture, les points de rupture sous forte charge et propose une "
               "refonte argumentée."],
        "zh": ["下面是我们服务的主要代码。请评审整体架构：流量增长十倍时哪里会出问题？你会先重构哪里？请说明权衡。"],
        "ja": ["以下は当社サービスのコードです。アーキテクチャをレビューし、負荷が10倍になった時のボトルネックと再設計案を示してください。"],
        "ru": ["Вот код нашего сервиса. Оцени архитектуру: что сломается при десятикратной нагрузке и как бы ты "
               "перестроил систему? Обоснуй компромиссы."],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 35):
        dump = repo_dump(rng, rng.randint(4, 9))
        items.append(Item("architecture_review_large", T, lang, user(f"{a}\n\n{dump}" if rng.random() < 0.5
                                                                     else f"{dump}\n\n{a}"), out_tokens(rng, T)))
    return items


@family("proofs", T, "mathematical and CS proofs, short asks and with context")
def proofs(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Prove that there are infinitely many primes of the form 4k+3.", "prove that sqrt(2) is irrational, "
               "rigorously", "Show that every planar graph is 5-colorable.", "Prove that the halting problem is "
               "undecidable.", "prove that a comparison sort needs Omega(n log n) comparisons in the worst case",
               "Prove that any tree with n vertices has n-1 edges, by induction.", "Show that the set of real numbers "
               "is uncountable.", "Prove that every bipartite graph with all degrees equal to k has a perfect matching",
               "prove that the expected number of comparisons in randomized quicksort is O(n log n)",
               "Show that the language of balanced parentheses is not regular", "prove that two-phase locking "
               "guarantees conflict serializability", "Prove the Cauchy-Schwarz inequality in an inner product space "
               "and give the equality case", "prove Dijkstra's algorithm is correct for non-negative weights",
               "Prove that if A is a symmetric real matrix then its eigenvectors for distinct eigenvalues are "
               "orthogonal.", "Show that 3-SAT reduces to independent set and conclude it's NP-hard",
               "Prove that the sum of the reciprocals of the primes diverges", "prove that Raft never commits two "
               "different entries at the same index", "Prove that e is irrational.", "Show the amortized cost of a "
               "dynamic array append is O(1) using the potential method", "Prove that every continuous function on "
               "[a,b] is uniformly continuous."],
        "es": ["Demuestra que hay infinitos números primos.", "Demuestra por inducción que 1+2+...+n = n(n+1)/2 y "
               "generalízalo a la suma de cuadrados", "Demuestra que el problema de la parada es indecidible"],
        "de": ["Beweise, dass es unendlich viele Primzahlen gibt.", "Zeige, dass jede konvergente Folge beschränkt "
               "ist, und dass die Umkehrung nicht gilt.", "Beweise die Korrektheit von Kruskals Algorithmus"],
        "fr": ["Démontre que racine de 2 est irrationnel.", "Montre que toute suite de Cauchy dans R converge.",
               "Prouve que le tri par comparaison nécessite au moins n log n comparaisons"],
        "pt": ["Prove que existem infinitos números primos.", "Demonstre que todo grafo planar é 5-colorível"],
        "it": ["Dimostra che la radice di 2 è irrazionale"],
        "zh": ["证明根号2是无理数", "证明存在无穷多个素数", "证明任何基于比较的排序算法最坏情况下需要Ω(n log n)次比较"],
        "ja": ["素数が無限に存在することを証明してください", "√2が無理数であることを証明して"],
        "ru": ["Докажи, что простых чисел бесконечно много", "Докажи, что любая сходящаяся последовательность "
               "ограничена", "Докажи неразрешимость проблемы остановки"],
        "pl": ["Udowodnij, że liczb pierwszych jest nieskończenie wiele"],
    }
    return [Item("proofs", T, lang, user(casing(rng, a)), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, asks, 62)]


@family("derivations", T, "derivations in math, physics, statistics and ML")
def derivations(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Derive the backpropagation equations for a two-layer network with softmax and cross-entropy loss",
               "derive the Black-Scholes PDE from Ito's lemma", "Derive the closed-form solution of ridge regression "
               "and show when it is unique", "derive the maximum likelihood estimator for the parameters of a "
               "Gaussian mixture via EM", "Derive the Euler-Lagrange equation from the principle of least action",
               "derive the variance of the OLS estimator under heteroskedasticity", "Derive the Kalman filter update "
               "equations from Bayes' rule", "derive the Schwarzschild radius from first principles, as far as "
               "possible without full GR", "Derive the gradient of the attention softmax with respect to the "
               "queries", "Derive the formula for the expected number of coin flips to get k heads in a row"],
        "es": ["Deduce las ecuaciones de retropropagación para una red de dos capas con softmax",
               "Deriva la solución cerrada de la regresión ridge"],
        "de": ["Leite die Black-Scholes-Gleichung aus Itôs Lemma her", "Leite die Kalman-Filter-Gleichungen her"],
        "fr": ["Dérive les équations de la rétropropagation pour un réseau à deux couches",
               "Démontre la formule de la variance de l'estimateur des MCO sous hétéroscédasticité"],
        "zh": ["推导两层神经网络在softmax和交叉熵损失下的反向传播公式", "从伊藤引理推导Black-Scholes方程"],
        "ja": ["リッジ回帰の閉形式解を導出してください", "変分オートエンコーダのELBOを導出してください"],
        "ru": ["Выведи уравнения обратного распространения ошибки для двухслойной сети",
               "Выведи разложение ошибки на смещение и дисперсию для квадратичной функции потерь"],
        "pt": ["Deduza o teorema do gradiente de política e mostre por que a linha de base não introduz viés"],
    }
    return [Item("derivations", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 40)]


@family("research_reasoning", T, "research-grade questions: critique methods, open problems, compare theories")
def research_reasoning(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["What are the strongest methodological criticisms of the replication crisis literature in social "
               "psychology, and which fixes actually worked?", "Critically compare RLHF, DPO and constitutional "
               "approaches for aligning language models: assumptions, failure modes, evidence", "Is there a credible "
               "path to room-temperature superconductivity after LK-99? Weigh the evidence", "Design an experiment "
               "to separate the effect of class size from teacher quality, addressing confounders and ethics",
               "What would it take to prove P != NP, and why have the known barriers (relativization, natural proofs, "
               "algebrization) blocked past attempts?", "Evaluate the evidence for and against the amyloid "
               "hypothesis of Alzheimer's, including the recent antibody trials", "How should we estimate the causal "
               "effect of minimum wage increases given the Card-Krueger debate? Compare identification strategies",
               "Propose a research plan to test whether sparse autoencoders find causally meaningful features",
               "Why do large language models hallucinate citations? Review the competing explanations and propose "
               "an experiment that would distinguish them", "Compare the main interpretations of quantum mechanics on "
               "what each predicts differently, if anything, and which experiments could ever tell them apart",
               "Assess the evidence that intermittent fasting extends healthy lifespan in humans versus mice, and "
               "where the confounders are", "What are the open problems in verifying neural network robustness at "
               "scale, and which approaches look most promising?", "How strong is the case that remote work reduces "
               "productivity? Weigh the natural experiments and their identification problems",
               "Evaluate whether the Hubble tension points to new physics or to systematics; go through the "
               "measurements", "Design a pre-registered study to test whether a four-day work week changes output "
               "in a software company, including power analysis", "Critique the use of GDP as a welfare measure and "
               "compare the leading alternatives on theory and data availability"],
        "es": ["Compara críticamente las estrategias de identificación para estimar el efecto causal del salario "
               "mínimo en el empleo"],
        "de": ["Bewerte kritisch die Evidenz für die Amyloid-Hypothese bei Alzheimer, inklusive der neuen "
               "Antikörper-Studien"],
        "fr": ["Quelles sont les limites méthodologiques des études sur la crise de la réplication, et quelles "
               "solutions ont vraiment fonctionné ?"],
        "zh": ["请批判性比较RLHF、DPO和宪法式对齐方法的假设、失效模式和证据", "设计一个实验来区分班级规模和教师质量对学习成绩的影响，并讨论混杂因素"],
        "ja": ["P≠NPの証明が難しい理由を、既知の障壁を踏まえて説明してください", "大規模言語モデルが引用を捏造する理由について、競合する仮説を比較し、区別する実験を提案してください"],
        "ru": ["Сравни критически подходы к оценке причинного эффекта повышения минимальной зарплаты",
               "Оцени, указывает ли напряжение Хаббла на новую физику или на систематические ошибки"],
        "pt": ["Avalie criticamente as evidências de que o jejum intermitente aumenta a longevidade em humanos"],
        "it": ["Confronta le principali interpretazioni della meccanica quantistica e cosa prevedono di diverso"],
    }
    return [Item("research_reasoning", T, lang, user(a), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, asks, 38)]


_CONTRACT = """Clause 7.2 Liability. Neither party shall be liable for indirect or consequential damages, except in case
of gross negligence or wilful misconduct. The Supplier's aggregate liability is capped at the fees paid in the twelve
months preceding the claim.
Clause 9.1 Termination. The Customer may terminate for convenience with 90 days' notice; the Supplier may terminate
only for material breach not cured within 30 days.
Clause 11.4 Data. The Supplier processes personal data only on documented instructions and shall notify the Customer
of a personal data breach without undue delay, and in any case within 72 hours.
Clause 14 Governing law. This agreement is governed by the laws of England and Wales; disputes go to arbitration in
London under LCIA rules."""
_LABS = """Patient, 67, male. Type 2 diabetes (metformin 1000 mg bid), hypertension (lisinopril 20 mg), atrial
fibrillation on apixaban 5 mg bid. eGFR 38 (was 55 six months ago). Potassium 5.6. HbA1c 7.9. Recently started
ibuprofen for knee pain. BP 148/92. Complains of fatigue and ankle swelling."""


@family("high_stakes", T, "high-stakes legal, medical and financial reasoning with several constraints")
def high_stakes(rng: random.Random) -> list[Item]:
    asks = {
        "en": [("Our supplier leaked customer data and told us 9 days later. Given these clauses, what claims do we "
                "have, what is the liability exposure on both sides, and what should we do in the next 72 hours?",
                _CONTRACT),
               ("I'm a GP. Review this patient's medication list against the labs: what interactions and dose "
                "adjustments matter most, and what would you prioritise?", _LABS),
               ("We are choosing between a share deal and an asset deal for acquiring a German GmbH with pension "
                "liabilities. Walk through tax, liability and employee-transfer consequences and recommend one.", ""),
               ("I have 400k in a taxable account, 200k in an IRA, retiring in 2 years at 60 in California, moving to "
                "Portugal later. Lay out a withdrawal and Roth conversion strategy with the tax traps in both "
                "countries.", ""),
               ("Assess whether these contract terms are enforceable if the customer terminates after the supplier's "
                "breach notification was late, and what the damages cap means for consequential losses.", _CONTRACT),
               ("My 4-year-old has had a fever of 39.5 for three days, a rash on the palms and red eyes. What are the "
                "possible diagnoses, which are dangerous, and what should I tell the doctor?", ""),
               ("We found that our medical device firmware miscalculates insulin doses when the clock changes for "
                "daylight saving. Walk me through our regulatory obligations in the EU and US, the recall decision "
                "and how to communicate it.", ""),
               ("Our startup's cap table: founders 60%, seed 20% with 1x non-participating preference, employee pool "
                "10%, SAFE of 1.5M at 12M cap. A buyer offers 20M. Work out the waterfall and whether the founders "
                "should take it versus a Series A at 40M pre.", ""),
               ("I'm an executor of an estate with property in Spain and the UK and a will written in England. Which "
                "inheritance taxes apply, in which order, and what mistakes could make the heirs pay twice?", ""),
               ("Review this lease clause and tell me whether the landlord can keep my deposit for the repainting, "
                "what the law in Germany says about Schönheitsreparaturen, and how to respond.",
                "§ 8 Der Mieter verpflichtet sich, die Wohnung bei Auszug unabhängig vom Zustand vollständig "
                "renovieren zu lassen. Die Kaution in Höhe von drei Monatsmieten dient der Sicherung aller Ansprüche."),
               ("A pharmacist asked whether a patient on warfarin can start fluconazole for 2 weeks. Reason through "
                "the interaction mechanism, the expected INR change and a monitoring plan.", ""),
               ("Our bank's credit model approves fewer loans for one postcode area. Assess the fair-lending legal "
                "risk, how to test for disparate impact properly, and what remediation regulators would accept.", "")],
        "es": [("Somos una pyme y un proveedor filtró datos de clientes. Según estas cláusulas, ¿qué reclamaciones "
                "podemos hacer, cuál es la exposición de cada parte y qué hacemos en las próximas 72 horas?",
                _CONTRACT)],
        "de": [("Ich bin Hausärztin. Prüfe die Medikation dieses Patienten gegen die Laborwerte: welche "
                "Wechselwirkungen und Dosisanpassungen sind am wichtigsten?", _LABS)],
        "fr": [("Analyse ces clauses : en cas de fuite de données notifiée en retard, quelles sont nos options, "
                "l'exposition de chaque partie et la stratégie recommandée ?", _CONTRACT)],
        "zh": [("我是全科医生。请根据化验结果审查这位病人的用药：哪些药物相互作用和剂量调整最重要？请排出优先级。", _LABS)],
        "ja": [("供給業者が顧客データを漏洩し、通知は9日後でした。以下の条項に基づき、請求可能な内容、双方の責任範囲、今後72時間の対応を分析してください。",
                _CONTRACT)],
        "ru": [("Поставщик допустил утечку данных клиентов и сообщил через 9 дней. Исходя из этих пунктов договора, "
                "какие у нас требования, каковы риски сторон и что делать в ближайшие 72 часа?", _CONTRACT)],
    }
    flat = {lang: [f"{q}\n\n{ctx}".strip() for q, ctx in pairs] for lang, pairs in asks.items()}
    return [Item("high_stakes", T, lang, user(a), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, flat, 34)]


@family("algorithm_design_hard", T, "hard algorithm design with correctness and complexity arguments")
def algorithm_design_hard(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Give an O(n log n) algorithm for the number of inversions after k arbitrary swaps, online, and prove "
               "its bounds", "Design a data structure supporting insert, delete and median in O(log n) worst case "
               "with persistence; prove the bounds", "Find the minimum number of rooms for intervals that can be "
               "split at integer points, with a proof of optimality", "Design an approximation algorithm for "
               "metric k-center with factor 2 and prove no better factor is possible unless P=NP",
               "How do I compute exact shortest paths in a dynamic graph with edge deletions faster than recomputing "
               "Dijkstra? Analyse the best known approaches", "design a lock-free MPMC queue and argue "
               "linearizability and ABA safety", "Give a streaming algorithm for heavy hitters with sublinear "
               "memory and prove the error bound", "Design an algorithm to schedule n jobs with deadlines and "
               "precedence constraints on m machines minimising lateness; prove it or give the best approximation",
               "give a linear-time algorithm for the longest palindromic substring and prove why it's linear",
               "How can we detect a cycle in a directed graph that changes online with edge insertions, in "
               "amortised sublinear time per update? Analyse the options", "Design a consistent hashing scheme "
               "with bounded loads and prove the maximum load bound", "Find an algorithm for the k shortest "
               "simple paths and analyse its complexity carefully", "Design a succinct rank/select structure over "
               "a bit vector with o(n) extra space and O(1) queries, with the proof"],
        "es": ["Diseña una estructura de datos persistente con inserción, borrado y mediana en O(log n) y demuestra "
               "las cotas"],
        "de": ["Entwirf eine lock-freie MPMC-Queue und begründe Linearisierbarkeit und ABA-Sicherheit"],
        "fr": ["Conçois un algorithme d'approximation pour le k-centre métrique avec facteur 2 et prouve sa borne"],
        "zh": ["设计一个支持插入、删除和查询中位数的持久化数据结构，最坏情况O(log n)，并证明复杂度",
               "设计一个无锁的多生产者多消费者队列，并论证线性一致性和ABA安全"],
        "ja": ["重複要素を含む配列でk番目に小さい要素を求める決定的線形時間アルゴリズムを設計し、計算量を証明してください"],
        "ru": ["Придумай потоковый алгоритм поиска частых элементов с сублинейной памятью и докажи оценку ошибки"],
    }
    return [Item("algorithm_design_hard", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 38)]


_LOG = """2024-05-02T10:14:03.112Z worker-3 INFO  claimed job 88121 lease=30s
2024-05-02T10:14:03.115Z worker-7 INFO  claimed job 88121 lease=30s
2024-05-02T10:14:31.998Z worker-3 WARN  lease renewal failed: context deadline exceeded
2024-05-02T10:14:33.004Z worker-7 INFO  job 88121 charged customer 5521 amount=49.00
2024-05-02T10:14:33.010Z worker-3 INFO  job 88121 charged customer 5521 amount=49.00
2024-05-02T10:14:33.400Z api-1    ERROR duplicate ledger entry for job 88121 (unique violation ignored by retry)
2024-05-02T10:15:10.221Z coordinator INFO partition rebalanced: 12 -> 13 members"""


@family("distributed_debug_deep", T, "root-causing races and distributed bugs from logs and code across services")
def distributed_debug_deep(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Customers get charged twice a few times a day. Logs and the worker code are below. Find the root "
               "cause, explain the exact interleaving, and propose a fix that stays correct under partitions and "
               "clock skew.", "Our p99 latency doubles every hour on the hour and we lose some messages during "
               "rebalances. Figure out what is happening from these logs and code and how to fix it for good.",
               "Two workers claimed the same job. Reason through the lease protocol below and prove your fix "
               "prevents it."],
        "es": ["A algunos clientes se les cobra dos veces. Abajo están los logs y el código. Encuentra la causa raíz, "
               "explica el entrelazado exacto y propón una solución correcta ante particiones de red."],
        "de": ["Manche Kunden werden doppelt belastet. Unten Logs und Code. Finde die Ursache, erkläre die genaue "
               "Verzahnung und schlage eine Lösung vor, die auch bei Netzpartitionen korrekt bleibt."],
        "zh": ["有些客户会被重复扣款。下面是日志和代码。请找出根本原因，解释具体的交错执行顺序，并给出在网络分区和时钟偏移下仍然正确的修复方案。"],
        "ru": ["Клиентов иногда списывают дважды. Ниже логи и код. Найди первопричину, опиши точную последовательность "
               "событий и предложи исправление, корректное при разделении сети."],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 30):
        code = repo_dump(rng, rng.randint(2, 5))
        items.append(Item("distributed_debug_deep", T, lang, user(f"{a}\n\n```\n{_LOG}\n```\n\n{code}"),
                          out_tokens(rng, T)))
    return items


@family("security_audit_large", T, "security audit and threat model of a large pasted codebase")
def security_audit_large(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Do a full security audit of this code: find every vulnerability, rate severity, show exploit paths "
               "and fixes. Then give me a threat model for the whole service.", "We're about to pass a SOC2 audit. "
               "Review these files for auth, injection, secrets and crypto mistakes and prioritise them by risk.",
               "Pen-test style review: how would an attacker chain issues in these modules to take over an account?",
               "Audit this service for multi-tenant data leaks across every file, explain each exploit and design "
               "the isolation model we should have had", "Review the auth and session handling across these files "
               "as a red team would, and rank fixes by exploitability and blast radius"],
        "es": ["Haz una auditoría de seguridad completa de este código: vulnerabilidades, gravedad, rutas de "
               "explotación y correcciones, y un modelo de amenazas del servicio."],
        "de": ["Mach ein vollständiges Sicherheitsaudit dieses Codes mit Schweregrad, Angriffspfaden und einem "
               "Bedrohungsmodell."],
        "fr": ["Fais un audit de sécurité complet de ce code, avec la gravité, les scénarios d'attaque et un modèle de "
               "menaces."],
        "zh": ["对下面的代码做一次完整的安全审计：找出所有漏洞、评估严重程度、说明利用路径和修复方法，并给出整个服务的威胁模型。"],
        "ru": ["Проведи полный аудит безопасности этого кода: уязвимости, критичность, сценарии атак и модель угроз."],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 25):
        items.append(Item("security_audit_large", T, lang, user(f"{a}\n\n{repo_dump(rng, rng.randint(4, 9))}"),
                          out_tokens(rng, T)))
    return items


_STRATEGY_ASKS = {
    "en": ["Based on all of this, should we expand to Portugal, double down on the north, or cut the garden line? "
           "Build the argument with numbers, risks and second-order effects, and recommend one.",
           "Given these reports, evaluate three strategic options for next year and their trade-offs, including what "
           "could go wrong with each and how we'd know early", "Read everything below and write the board memo: "
           "diagnosis, options, trade-offs, recommendation, and what would change your mind"],
    "es": ["Con toda esta información, evalúa tres opciones estratégicas para el próximo año, sus riesgos y "
           "compensaciones, y recomienda una con argumentos."],
    "de": ["Bewerte auf Basis dieser Berichte drei strategische Optionen mit ihren Zielkonflikten und Risiken und gib "
           "eine begründete Empfehlung."],
    "fr": ["À partir de ces documents, évalue trois options stratégiques, leurs compromis et risques, et recommande-en "
           "une."],
    "zh": ["根据以下所有材料，评估明年的三个战略选项及其利弊和风险，并给出有理有据的建议。"],
    "ja": ["以下の資料をすべて踏まえて、来年の戦略オプションを3つ評価し、トレードオフとリスクを整理して推奨案を示してください。"],
    "ru": ["На основе всех этих материалов оцени три стратегических варианта, их риски и компромиссы и дай "
           "обоснованную рекомендацию."],
}


@family("strategy_large_context", T, "strategy and trade-off analysis over a large pasted context")
def strategy_large_context(rng: random.Random) -> list[Item]:
    items = []
    for lang, a in asks_by_lang(rng, _STRATEGY_ASKS, 30):
        doc = long_document(rng, lang if rng.random() < 0.5 else "en", rng.randint(25, 70))
        items.append(Item("strategy_large_context", T, lang, user(f"{doc}\n\n{a}" if rng.random() < 0.6
                                                                  else f"{a}\n\n{doc}"), out_tokens(rng, T)))
    return items


@family("trace_root_cause_multi", T, "root cause across several stack traces and services at once")
def trace_root_cause_multi(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["These errors started at the same time in three services after Tuesday's deploy. Correlate them, find "
               "the single root cause and explain the causal chain, then propose a rollout plan that prevents this "
               "class of failure."],
        "de": ["Diese Fehler traten nach dem Deployment gleichzeitig in drei Diensten auf. Finde die gemeinsame "
               "Ursache, erkläre die Kausalkette und schlage einen Rollout-Plan vor, der diese Fehlerklasse verhindert."],
        "zh": ["周二上线后三个服务同时出现以下错误。请关联分析，找出唯一的根本原因，解释因果链，并提出能防止这类故障的发布方案。"],
        "es": ["Estos errores empezaron a la vez en tres servicios tras el despliegue. Correlaciónalos, encuentra la "
               "causa raíz común y propone un plan de despliegue que evite este tipo de fallo."],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 20):
        traces = "\n\n".join(t for _, t in rng.sample(TRACES, 3))
        items.append(Item("trace_root_cause_multi", T, lang, user(f"{a}\n\n{traces}\n\n{repo_dump(rng, 3)}"),
                          out_tokens(rng, T)))
    return items


@family("math_olympiad", T, "competition-level problems stated in a line or two")
def math_olympiad(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Find all functions f: R -> R such that f(x + y) = f(x) + f(y) + 2xy for all real x, y, with f "
               "continuous.", "How many positive integers n < 1000 make n^2 + n + 41 composite? Justify carefully.",
               "Find all integer solutions of x^3 + y^3 = z^3 + 1 with small |x|, and argue whether infinitely many "
               "exist", "A frog jumps on the integers starting at 0, each jump +1 or +2 with equal probability. What "
               "is the probability it ever lands on n? Find the limit as n grows.", "Show that among any 7 integers "
               "there are 4 whose sum is divisible by 4", "Determine all n for which n! + 1 is a perfect square "
               "below 10^6, and discuss Brocard's problem", "In a tournament of n players where everyone plays "
               "everyone, show there is a player who beats every other player directly or through one intermediary",
               "Find the maximum of xy + yz + zx subject to x + y + z = 1 and x, y, z >= 0, and characterise the "
               "extremal points", "Evaluate the sum over k of binomial(n,k)^2 * k and give a combinatorial proof",
               "What is the expected number of fixed points of a random permutation, and the distribution as n -> "
               "infinity? Derive it."],
        "es": ["Encuentra todas las funciones continuas f: R → R tales que f(x+y) = f(x) + f(y) + 2xy"],
        "de": ["Zeige, dass es unter je 7 ganzen Zahlen 4 gibt, deren Summe durch 4 teilbar ist"],
        "fr": ["Trouve toutes les fonctions continues f de R dans R telles que f(x+y) = f(x) + f(y) + 2xy"],
        "zh": ["求所有连续函数 f: R→R，使得对任意实数 x, y 有 f(x+y)=f(x)+f(y)+2xy", "证明任意7个整数中必有4个之和能被4整除"],
        "ja": ["任意の7つの整数の中に、和が4で割り切れる4つが存在することを示せ"],
        "ru": ["Найдите все непрерывные функции f: R → R, для которых f(x+y) = f(x) + f(y) + 2xy"],
    }
    return [Item("math_olympiad", T, lang, user(a), out_tokens(rng, T)) for lang, a in asks_by_lang(rng, asks, 22)]
