"""Local-tier families: small talk, simple facts, conversions, one-sentence rewrites, short translations and
formatting, classification of a short text, and long pastes that come with an easy ask."""

from __future__ import annotations

import random

from .items import Item, asks_by_lang, casing, convo, family, out_tokens, user
from .prose import SHORT_TEXTS, long_document

T = "local"


@family("smalltalk", T, "greetings, thanks, small talk, how are you")
def smalltalk(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["hi", "hello!", "hey there", "good morning :)", "how are you today?", "thanks, that helped a lot",
               "ok got it", "lol that's funny", "what's up?", "thank you so much!", "you're the best",
               "good night", "I'm bored, talk to me", "are you a robot?", "what's your name?",
               "can you say that shorter?", "nice, thanks", "hahaha ok", "do you like music?",
               "tell me something nice", "I had a rough day today", "happy friday!", "sorry, wrong chat",
               "never mind", "cool", "Hi! Who am I talking to?", "morning! coffee first", "yo",
               "Merry Christmas!", "thanks, bye", "what's your favourite colour?", "do you ever sleep?",
               "I passed my driving test!!", "ugh mondays", "hello again", "tell me a joke", "knock knock",
               "are you there?", "good evening", "I'm so tired today", "you're funny", "howdy", "sup",
               "Hi, nice to meet you", "thanks for earlier", "what can you do?", "bye for now", "it's raining again"],
        "es": ["hola", "buenos días, ¿qué tal?", "gracias, muy amable", "jaja vale", "¿cómo estás?",
               "buenas noches", "¿eres una persona?", "perfecto, gracias", "cuéntame un chiste", "¡aprobé el examen!",
               "qué día más largo"],
        "de": ["Hallo!", "Guten Morgen, wie geht's?", "Danke dir!", "alles klar", "Bist du ein Mensch?",
               "Schönes Wochenende!", "Erzähl mir einen Witz", "Na, was geht?", "Ich bin so müde heute"],
        "fr": ["Bonjour !", "salut, ça va ?", "merci beaucoup", "bonne soirée", "tu t'appelles comment ?",
               "d'accord, merci", "raconte-moi une blague", "j'ai eu mon permis !"],
        "pt": ["oi, tudo bem?", "obrigado!", "bom dia"],
        "it": ["ciao!", "grazie mille", "buonanotte"],
        "zh": ["你好", "谢谢！", "早上好", "你是机器人吗？", "好的，明白了", "讲个笑话吧", "今天好累啊", "晚安"],
        "ja": ["こんにちは", "ありがとう！", "おはようございます", "よろしくお願いします", "おやすみなさい", "何か面白い話をして"],
        "ru": ["привет", "спасибо!", "как дела?", "доброе утро"],
        "ko": ["안녕하세요", "고마워요"],
    }
    return [Item("smalltalk", T, lang, user(a), out_tokens(rng, T) // 4 + 5) for lang, a in asks_by_lang(rng, asks, 85)]


@family("facts", T, "simple factual questions")
def facts(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["What is the capital of Australia?", "who wrote pride and prejudice", "How tall is Mount Everest?",
               "When did the Berlin Wall fall?", "What's the boiling point of water at sea level?",
               "How many planets are in the solar system?", "Who painted the Mona Lisa?",
               "what language do they speak in Brazil", "What is the largest ocean?",
               "How many days are in a leap year?", "What does DNA stand for?", "Who was the first person on the moon?",
               "what's the population of canada roughly", "Which country has the most islands?",
               "What year did the Titanic sink?", "What is the chemical symbol for gold?",
               "how many bones does an adult human have", "What's the longest river in Africa?",
               "Who discovered penicillin?", "What currency does Japan use?", "Is a tomato a fruit?",
               "what time zone is Chicago in", "Who is the author of One Hundred Years of Solitude?",
               "How far is the moon from earth?", "What's the speed of light?", "when is the summer solstice",
               "What does CPU stand for?", "how many players on a soccer team", "Which planet is the hottest?",
               "What is the smallest country in the world?", "Who invented the telephone?",
               "What's the tallest building in the world right now?", "how old is the universe",
               "Which element has atomic number 6?", "What's the capital of Canada, Ottawa or Toronto?",
               "who is the current secretary-general of the UN?", "What is the freezing point of water in Fahrenheit?",
               "how many legs does a spider have", "Where is Machu Picchu?", "What's the national animal of Scotland?",
               "who composed the four seasons", "How many strings does a violin have?", "what does a barista do",
               "Which is the largest desert in the world?", "What's the main ingredient in hummus?",
               "How many time zones does Russia have?", "Who was Ada Lovelace?", "what's the fastest land animal",
               "In which country is the Atacama desert?", "how long is a marathon in km", "What is photosynthesis, "
               "in one sentence?", "what year did the first iPhone come out", "Who wrote 'The Little Prince'?"],
        "es": ["¿Cuál es la capital de Perú?", "¿Quién escribió Don Quijote?", "¿Cuántos continentes hay?",
               "¿Cuál es el animal más rápido del mundo?", "¿Dónde está Machu Picchu?", "¿Quién pintó Las Meninas?",
               "¿En qué año llegó Colón a América?", "¿Cuál es el planeta más grande del sistema solar?",
               "¿Qué idioma se habla en Austria?", "¿cuánto mide la torre eiffel?"],
        "de": ["Was ist die Hauptstadt von Kanada?", "Wer hat Faust geschrieben?", "Wie hoch ist die Zugspitze?",
               "Wie lang ist ein Marathon?", "Wer hat das Telefon erfunden?", "Welches ist der größte Planet?",
               "Wann wurde die Bundesrepublik gegründet?", "Wie viele Einwohner hat Berlin?",
               "Welcher Fluss fließt durch Wien?"],
        "fr": ["Quelle est la capitale du Maroc ?", "Qui a écrit Les Misérables ?", "Combien y a-t-il de pays en Europe ?",
               "Qui a peint Guernica ?", "Quelle est la langue officielle du Brésil ?",
               "Quelle est la plus haute montagne de France ?", "En quelle année a eu lieu la Révolution française ?"],
        "pt": ["Qual é a capital da Austrália?", "Quem descobriu o Brasil?", "Quantos estados tem o Brasil?"],
        "it": ["Qual è il fiume più lungo d'Italia?", "Chi ha dipinto la Cappella Sistina?"],
        "zh": ["中国最长的河流是哪条？", "《红楼梦》的作者是谁？", "一年有多少天？", "地球到太阳有多远？", "珠穆朗玛峰有多高？",
               "世界上最大的沙漠是哪个？", "光速是多少？", "李白是哪个朝代的诗人？"],
        "ja": ["日本で一番高い山は何ですか？", "東京の人口はどれくらいですか？", "源氏物語の作者は誰ですか？",
               "日本の国鳥は何ですか？", "富士山の高さは？"],
        "ru": ["Какая столица у Австралии?", "Кто написал «Войну и мир»?", "Сколько морей омывают Россию?",
               "Какое самое глубокое озеро в мире?", "Когда был основан Санкт-Петербург?"],
        "ko": ["한국의 수도는 어디인가요?", "세계에서 가장 긴 강은?"],
        "tr": ["Türkiye'nin başkenti neresidir?"],
        "nl": ["Wat is de hoofdstad van Nederland?", "Hoeveel provincies heeft België?"],
        "pl": ["Jaka jest stolica Kanady?", "Kto napisał Pana Tadeusza?"],
    }
    return [Item("facts", T, lang, user(casing(rng, a)), out_tokens(rng, T) // 2)
            for lang, a in asks_by_lang(rng, asks, 110)]


_CONV_EN = ["Convert {n} miles to kilometers", "how many grams is {n} ounces", "{n} °F in celsius?",
            "What is {n} inches in cm?", "{n} kg to pounds", "how many cups in {n} liters",
            "convert {n} USD to EUR roughly", "What's {n} km/h in mph?", "{n} feet in meters please",
            "how many seconds are in {n} hours", "{n} gallons to liters", "Convert {n} to binary",
            "what is {n} in roman numerals", "{n}% of 250?", "How many minutes is {n} hours?",
            "Convert {n} square meters to square feet", "{n} pounds in stone?", "round {n}.4567 to two decimals",
            "{n} GB in MB", "what's {n} in hexadecimal"]


@family("conversions", T, "unit, currency and number conversions")
def conversions(rng: random.Random) -> list[Item]:
    asks = {
        "en": _CONV_EN,
        "es": ["¿Cuántos kilómetros son {n} millas?", "convierte {n} grados Fahrenheit a Celsius",
               "{n} libras a kilos", "¿cuántos metros son {n} pies?"],
        "de": ["Wie viel sind {n} Meilen in Kilometern?", "Rechne {n} Fahrenheit in Celsius um",
               "{n} Unzen in Gramm?", "Wie viele Sekunden haben {n} Stunden?"],
        "fr": ["Combien font {n} miles en kilomètres ?", "convertis {n} livres en kilos",
               "{n} pieds en mètres ?"],
        "pt": ["Quantos quilômetros são {n} milhas?", "converta {n} graus Fahrenheit para Celsius"],
        "it": ["Quanti chilometri sono {n} miglia?"],
        "zh": ["{n}英里等于多少公里？", "{n}华氏度是多少摄氏度？", "{n}磅是多少公斤？"],
        "ja": ["{n}マイルは何キロですか？", "華氏{n}度は摂氏何度？"],
        "ru": ["Сколько километров в {n} милях?", "Переведи {n} градусов Фаренгейта в Цельсии"],
    }
    return [Item("conversions", T, lang, user(casing(rng, a.format(n=rng.choice([3, 5, 12, 20, 37, 64, 100, 250,
                                                                                    1500, 72, 98, 2024])))),
                 out_tokens(rng, T) // 3) for lang, a in asks_by_lang(rng, asks, 70)]


_SENTENCES = ["i want to cancel my subscription because its to expensive",
              "The meeting have been moved to next week due to the holidays.",
              "We regret to inform you that your application was not successful.",
              "pls send me the report asap, boss is asking",
              "Our product is very good and very cheap and very fast.",
              "I am writing to complain about the noise from the apartment upstairs.",
              "the new update broke everything and nobody told us",
              "Can u come to the party on saturday or not"]


@family("rewrite_sentence", T, "one-sentence rewrites: more formal, friendlier, shorter, fix grammar")
def rewrite_sentence(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Make this sound more professional: {s}", "Rewrite this sentence more politely: {s}",
               "fix the grammar: {s}", "Can you make this shorter? \"{s}\"", "make it friendlier: {s}",
               "Rephrase: {s}", "Correct the spelling and punctuation in: {s}", "Say this in a more casual way: {s}",
               "Reword this so it doesn't sound rude: {s}", "Give me a more formal version of \"{s}\"",
               "can you make this sound less passive-aggressive? {s}", "Rewrite in plain English: {s}",
               "Shorten to under 10 words: {s}", "make this sound more confident: {s}", "rewrite as a question: {s}"],
        "es": ["Hazlo más formal: «Oye, mándame el informe ya»", "corrige esta frase: 'ayer fuimos a la playa y "
               "hací mucho calor'", "Reescribe de forma más amable: «No puedo ayudarte con eso»"],
        "de": ["Formuliere höflicher: „Schick mir endlich die Rechnung.“", "Korrigiere bitte: 'Ich habe gestern "
               "nach Berlin gefahren.'", "Mach den Satz kürzer: „Aufgrund der Tatsache, dass es regnet, bleiben wir "
               "zu Hause.“"],
        "fr": ["Rends cette phrase plus polie : « Envoie-moi le dossier. »", "corrige : 'je suis allé au magasin "
               "hier et j'ai acheter du pain'", "Reformule plus simplement : « Nous vous prions de bien vouloir "
               "nous excuser pour la gêne occasionnée. »"],
        "pt": ["Deixe mais formal: 'manda o relatório aí'", "corrija: 'nós vai chegar amanhã'"],
        "it": ["Rendi più cortese: 'Mandami i documenti subito.'"],
        "zh": ["把这句话改得更礼貌一些：“你快点把文件发给我。”", "帮我改一下这句话的语病：“通过这次活动，使我学到了很多。”"],
        "ja": ["もっと丁寧に言い換えてください：「資料を早く送って」"],
        "ru": ["Перефразируй вежливее: «Пришли мне отчёт сейчас же»", "Исправь ошибки: «Я вчера ходил в магазин и "
               "купил хлеба и молоко»"],
    }
    return [Item("rewrite_sentence", T, lang, user(a.format(s=rng.choice(_SENTENCES))), out_tokens(rng, T) // 3)
            for lang, a in asks_by_lang(rng, asks, 72)]


_PHRASES = ["Where is the nearest pharmacy?", "I'd like to book a table for four at eight.", "Happy birthday, my friend!",
            "The train is delayed by twenty minutes.", "Could you please speak more slowly?", "I'm allergic to peanuts.",
            "See you tomorrow at the office.", "How much does this cost?", "Thank you for your patience.",
            "Good luck with your exam!"]
_TARGETS = ["Spanish", "French", "German", "Italian", "Japanese", "Portuguese", "Chinese", "Korean", "Dutch", "Polish"]


@family("translate_short", T, "translations of a word, phrase or sentence")
def translate_short(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Translate '{p}' into {t}", "how do you say \"{p}\" in {t}?", "{t} for: {p}",
               "Can you translate this to {t}: {p}", "What's \"{p}\" in {t}?", "translate to {t} pls: {p}",
               "How would a native speaker say '{p}' in {t}?", "{p} -> {t}", "quick {t} translation: {p}",
               "What's the English word for 'Handschuh'?", "translate 'buenos días' to english",
               "How do you write 'thank you' in Korean?", "What does 'arigato gozaimasu' mean?",
               "What does 'Schadenfreude' mean in English?", "How do I say 'cheers' in Japanese?",
               "translate 'merci beaucoup' to english"],
        "es": ["Traduce al inglés: «¿Dónde está la estación de tren?»", "¿Cómo se dice 'mariposa' en alemán?",
               "traduce al francés: buenas noches a todos", "Pásame esto al inglés: «Llegaré tarde a la reunión»"],
        "de": ["Übersetze ins Englische: „Ich freue mich auf das Wochenende.“", "Was heißt 'Feierabend' auf "
               "Englisch?", "Wie sagt man 'Gesundheit' auf Spanisch?"],
        "fr": ["Traduis en anglais : « Je suis en retard, désolé. »", "Comment dit-on 'parapluie' en italien ?",
               "traduction de 'kitchen sink' en français ?"],
        "pt": ["Traduza para o inglês: 'Onde fica o banheiro?'", "Como se diz 'saudade' em inglês?"],
        "it": ["Traduci in inglese: 'Vorrei un caffè, per favore.'"],
        "zh": ["把“我明天去北京出差”翻译成英文", "“谢谢你的帮助”用日语怎么说？", "翻译成中文：See you next week."],
        "ja": ["「よろしくお願いします」を英語に訳してください", "“I miss you”は日本語で何と言いますか？"],
        "ru": ["Переведи на английский: «Я опаздываю на поезд»", "Как будет 'спасибо' по-немецки?"],
        "ko": ["'감사합니다'를 영어로 번역해 주세요"],
        "tr": ["'Günaydın' İngilizcede ne demek?"],
    }
    return [Item("translate_short", T, lang, user(casing(rng, a.format(p=rng.choice(_PHRASES), t=rng.choice(_TARGETS)))),
                 out_tokens(rng, T) // 4) for lang, a in asks_by_lang(rng, asks, 95)]


_LISTS = ["apples, bananas, milk, eggs, bread, coffee", "Anna Schmidt; Ben Ortiz; Chloé Martin; Dmitri Ivanov",
          "monday 9am dentist, tuesday gym, wednesday call mom, friday dinner with sam",
          "red,green,blue,yellow,purple", "name: John, age: 34, city: Leeds",
          "1) buy tickets 2) pack bags 3) water the plants 4) lock the door"]


@family("formatting", T, "reformat a short text: lists, case, tables, dates")
def formatting(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Turn this into a bulleted list: {l}", "Sort these alphabetically: {l}", "put this in a markdown table: {l}",
               "make this a numbered list: {l}", "Format as comma separated, one line: {l}",
               "Capitalize each item: {l}", "Convert this to title case: the lord of the rings return of the king",
               "make this lowercase: HELLO WORLD THIS IS LOUD", "add emojis to this list: {l}",
               "Turn this into a checklist: {l}", "split these into two columns: {l}", "Put quotes around each "
               "item: {l}", "Alphabetize and number: {l}",
               "Write the date 03/04/2025 in ISO format", "reformat as JSON: {l}", "Put these in reverse order: {l}",
               "Make every word uppercase: please handle with care", "remove the duplicates: a, b, a, c, b, d"],
        "es": ["Ordena alfabéticamente: pera, manzana, kiwi, uva, melón", "Conviértelo en una lista con viñetas: {l}"],
        "de": ["Mach daraus eine nummerierte Liste: {l}", "Sortiere alphabetisch: Zebra, Apfel, Haus, Baum"],
        "fr": ["Mets ça sous forme de liste à puces : {l}", "Écris cette date au format ISO : 5 mars 2024"],
        "zh": ["把下面的内容整理成列表：{l}", "按字母顺序排序：banana, apple, cherry"],
        "ja": ["次を箇条書きにしてください：{l}"],
        "ru": ["Оформи списком: {l}"],
    }
    return [Item("formatting", T, lang, user(casing(rng, a.format(l=rng.choice(_LISTS)))), out_tokens(rng, T) // 3)
            for lang, a in asks_by_lang(rng, asks, 58)]


@family("classify_short", T, "classify a short text: sentiment, spam, topic, language")
def classify_short(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Is this review positive or negative? {x}", "spam or not spam: {x}", "What's the sentiment here: {x}",
               "Classify this as complaint, question or praise: {x}", "What language is this? {x}",
               "Which category fits best - sports, politics, business, local news? {x}",
               "one word: positive, negative or neutral? \"{x}\"", "Is this message urgent? {x}",
               "label the tone of this text (angry/happy/neutral): {x}", "is this a phishing email? {x}"],
        "es": ["¿Esta reseña es positiva o negativa? {x}", "¿Es spam? {x}", "Clasifica el tono de este mensaje: {x}"],
        "de": ["Ist diese Bewertung positiv oder negativ? {x}", "Spam oder nicht? {x}"],
        "fr": ["Cet avis est-il positif ou négatif ? {x}", "C'est du spam ? {x}"],
        "pt": ["Esse comentário é positivo ou negativo? {x}"],
        "zh": ["判断这条评论是正面还是负面：{x}", "这是垃圾信息吗？{x}"],
        "ja": ["このレビューはポジティブですか、ネガティブですか？{x}"],
        "ru": ["Это отзыв положительный или отрицательный? {x}"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 60):
        pool = SHORT_TEXTS.get(lang if rng.random() < 0.7 else "en") or SHORT_TEXTS["en"]
        items.append(Item("classify_short", T, lang, user(a.format(x=rng.choice(pool))), out_tokens(rng, T) // 6 + 2))
    return items


@family("define_word", T, "meaning of a word or idiom, synonyms, spelling")
def define_word(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["What does 'ubiquitous' mean?", "define serendipity", "What's a synonym for 'happy'?",
               "what does 'break a leg' mean", "Is it 'affect' or 'effect' here: the weather will ___ our plans",
               "how do you spell necessary", "What's the opposite of 'generous'?", "meaning of 'bite the bullet'",
               "what is a haiku", "What's the plural of cactus?", "What does FYI mean?",
               "is 'irregardless' a real word?", "Give me three synonyms for 'important'",
               "what's the difference between 'fewer' and 'less'?", "What does 'per se' mean?",
               "word for when you forget a word", "What does 'OOO' mean in an email?", "what is a palindrome",
               "What's another word for 'said'?", "meaning of 'the ball is in your court'",
               "What does RSVP stand for?", "Is it 'everyday' or 'every day' in: I walk the dog ___"],
        "es": ["¿Qué significa 'efímero'?", "Dame un sinónimo de 'rápido'", "¿Qué quiere decir 'estar en las nubes'?"],
        "de": ["Was bedeutet 'Fernweh'?", "Was ist ein Synonym für 'schnell'?"],
        "fr": ["Que veut dire 'avoir le cafard' ?", "Un synonyme de 'joli' ?"],
        "pt": ["O que significa 'cafuné'?"],
        "zh": ["“画蛇添足”是什么意思？", "“卷”这个网络用语是什么意思？"],
        "ja": ["「木漏れ日」とはどういう意味ですか？"],
        "ru": ["Что значит слово «тоска»?", "Что означает выражение «бить баклуши»?"],
        "it": ["Cosa significa 'menefreghista'?"],
    }
    return [Item("define_word", T, lang, user(casing(rng, a)), out_tokens(rng, T) // 2)
            for lang, a in asks_by_lang(rng, asks, 46)]


@family("howto_everyday", T, "everyday how-to, recipes and quick tips")
def howto_everyday(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["How do I boil an egg so the yolk is still soft?", "what's a quick recipe for guacamole",
               "how do I get rid of fruit flies", "how long can cooked chicken stay in the fridge?",
               "How do I unclog a drain without chemicals?", "what's the best way to reheat pizza",
               "how do I make my basil plant bushier", "tips for a long flight with a toddler?",
               "how do I iron a shirt quickly", "what's a simple pancake recipe for 2", "how to descale a kettle",
               "How do I keep my glasses from fogging up with a mask?",
               "How do I get a red wine stain out of a carpet?", "tips for falling asleep faster?",
               "How long should I cook rice?", "how do I clean a cast iron pan", "What should I pack for a beach weekend?",
               "How often should I water a cactus?", "any ideas for a cheap date night?",
               "How do I tie a tie?", "how to make cold brew coffee", "What can I cook with chickpeas and spinach?",
               "How do I remove a stripped screw?", "best way to keep bananas fresh longer?",
               "how do I get my cat to stop scratching the sofa", "How many minutes to hard boil eggs?",
               "what's a good stretch for lower back pain", "how do you fold a fitted sheet"],
        "es": ["¿Cómo hago una tortilla de patatas?", "¿Cada cuánto riego un potus?", "consejos para dormir mejor",
               "¿Cómo quito una mancha de café de una camisa blanca?"],
        "de": ["Wie koche ich Spätzle?", "Wie bekomme ich Kalk aus dem Wasserkocher?", "Tipps gegen Mücken im Zimmer?"],
        "fr": ["Comment faire une pâte à crêpes ?", "Comment enlever une tache de gras sur un pull ?"],
        "pt": ["Como faço brigadeiro?", "Como tirar mancha de caneta da roupa?"],
        "it": ["Come si fa il ragù?", "Come pulire il forno in modo naturale?"],
        "zh": ["怎么做番茄炒蛋？", "衣服上的油渍怎么洗掉？", "失眠了有什么办法快速入睡？"],
        "ja": ["お米を美味しく炊くコツは？", "コーヒーのシミの落とし方を教えて"],
        "ru": ["Как сварить гречку на воде?", "Как убрать накипь с чайника?"],
    }
    return [Item("howto_everyday", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 68)]


@family("short_creative", T, "short poems, wishes, captions, names and slogans")
def short_creative(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Write a haiku about autumn rain", "give me a funny caption for a photo of my dog in sunglasses",
               "Write a short birthday message for my coworker Sam", "suggest 5 names for a bakery",
               "a two-line poem about coffee", "Write a limerick about a cat who hates Mondays",
               "Give me a catchy slogan for a lemonade stand", "short thank-you note for my kid's teacher",
               "write a riddle about the moon", "a funny one-liner about programmers", "Short wedding toast line for "
               "my best friend", "rhyme something with 'pizza'", "Write a motivational quote for my gym wall",
               "give me a pun about cheese", "Name for my fantasy football team? I like puns",
               "write a tiny poem for my mom's card, 4 lines", "a welcoming sentence for our Airbnb guests",
               "Write one sentence to congratulate a friend on her new job", "Name ideas for a golden retriever puppy?",
               "A cute good-morning text for my girlfriend", "Write a tweet announcing our café opens on Saturday",
               "invent a silly name for a dragon", "3 fun team names for a pub quiz"],
        "es": ["Escribe un haiku sobre el mar", "Dame un mensaje corto de cumpleaños para mi abuela",
               "ideas de nombres para una tienda de plantas"],
        "de": ["Schreib einen kurzen Geburtstagsgruß für meine Schwester", "Ein Reim über den Montag, bitte"],
        "fr": ["Écris un petit poème sur la pluie", "Un message de félicitations pour un mariage, court s'il te plaît"],
        "pt": ["Escreva uma frase de bom dia para o grupo da família"],
        "it": ["Scrivi una breve poesia sulla primavera"],
        "zh": ["写一首关于秋天的小诗", "给我的咖啡店起三个名字", "写一句生日祝福给同事"],
        "ja": ["春についての俳句を作ってください", "猫の名前のアイデアをください"],
        "ru": ["Напиши короткое поздравление с днём рождения для коллеги", "Придумай название для кофейни"],
    }
    return [Item("short_creative", T, lang, user(casing(rng, a)), out_tokens(rng, T) // 2)
            for lang, a in asks_by_lang(rng, asks, 52)]


@family("summarize_short", T, "one-line summary or headline of a short text")
def summarize_short(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Summarize this in one sentence: {x}", "tl;dr: {x}", "Give this a headline: {x}",
               "What's the main point here? {x}", "shorten to 10 words: {x}", "one-line summary please: {x}"],
        "es": ["Resume en una frase: {x}", "Ponle un título: {x}"],
        "de": ["Fass das in einem Satz zusammen: {x}", "Gib dem Text eine Überschrift: {x}"],
        "fr": ["Résume en une phrase : {x}"],
        "pt": ["Resuma em uma frase: {x}"],
        "zh": ["用一句话概括：{x}"],
        "ja": ["一文で要約してください：{x}"],
        "ru": ["Кратко, в одном предложении: {x}"],
    }
    items = []
    for lang, a in asks_by_lang(rng, asks, 45):
        pool = SHORT_TEXTS.get(lang) or SHORT_TEXTS["en"]
        text = " ".join(rng.sample(pool, min(2, len(pool))))
        items.append(Item("summarize_short", T, lang, user(a.format(x=text)), out_tokens(rng, T) // 4))
    return items


@family("recommendations", T, "suggestions of books, films, gifts, places")
def recommendations(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["Recommend a good sci-fi book", "what movie should I watch tonight? something light",
               "gift ideas for my dad who likes fishing?", "Any good podcasts about history?",
               "what's a good board game for 4 people", "suggest a weekend trip from Madrid",
               "Which houseplants are hard to kill?", "a good song for a road trip?",
               "What should I name my sourdough starter?", "Recommend a cozy mystery series",
               "what anime should I start with?", "best beginner camera under 500?", "recommend a podcast for a "
               "long drive", "what's a good book for a 10 year old who likes dragons?", "a relaxing video game?",
               "any good vegetarian restaurants style ideas for a dinner party?", "which city should I visit in "
               "Italy for the first time?", "a good documentary about space?", "what board games are fun for two?",
               "music like Norah Jones?"],
        "es": ["Recomiéndame una serie de comedia", "¿Qué libro le regalo a mi madre?"],
        "de": ["Welchen Film kannst du mir für heute Abend empfehlen?", "Geschenkidee für einen Kollegen?"],
        "fr": ["Tu peux me conseiller un bon roman policier ?"],
        "zh": ["推荐几部好看的科幻电影", "周末去杭州有什么好玩的？"],
        "ja": ["おすすめの小説を教えて"],
        "ru": ["Посоветуй хороший фильм на вечер"],
    }
    return [Item("recommendations", T, lang, user(casing(rng, a)), out_tokens(rng, T))
            for lang, a in asks_by_lang(rng, asks, 36)]


@family("long_doc_easy", T, "a long pasted document (several pages) with an easy ask: a date, a name, a count, "
                            "the language, one sentence translated")
def long_doc_easy(rng: random.Random) -> list[Item]:
    before = {
        "en": ["What date is the next meeting? Here are the notes:", "Who is supposed to send the timeline?",
               "how many trees did they plant? text below", "What's the title of this document?",
               "Just tell me what language this is written in:", "Is there a phone number anywhere in here?",
               "Does this text mention Lisbon? yes or no", "Translate only the first sentence into Spanish:",
               "What time does the library open on weekends? I pasted the notice.",
               "Find the rent due date in this lease, that's all I need:"],
        "es": ["¿Cuándo termina el plazo? Te pego el texto:", "¿De qué ciudad habla este texto?",
               "Solo dime cuántos euros vendió la empresa:"],
        "de": ["Wann beginnt die Wanderung? Hier der Text:", "In welcher Sprache ist das geschrieben?",
               "Wie viel kostet die Erweiterung laut dem Text?"],
        "fr": ["Quel jour a lieu l'atelier ? Voici le texte :", "Combien d'euros d'excédent ? Texte ci-dessous :"],
        "pt": ["Qual é a data da feira? Segue o texto:"],
        "zh": ["下面这段文字里图书馆几点关门？", "这篇文章提到的营业收入是多少？"],
        "ja": ["この文章で売上高はいくらですか？"],
        "ru": ["Во сколько закрывается библиотека по выходным? Текст ниже:"],
    }
    after = {
        "en": ["What's the date of the next meeting?", "who's mentioned in this?", "how many paragraphs is that?",
               "what's the first word of the second paragraph", "Just give me the number of residents surveyed.",
               "Which languages does the support team want?", "is this in English? lol",
               "Copy out the sentence about batteries, nothing else"],
        "es": ["¿Qué fecha se menciona?", "¿Cuántas personas se contrataron?"],
        "de": ["Wie viele Klassenzimmer kommen dazu?", "Welche Stadt wird genannt?"],
        "fr": ["Combien de temps dure la randonnée ?"],
        "zh": ["这段话是什么语言？", "文中提到的日期是哪天？"],
        "ru": ["Какой процент роста выручки?"],
    }
    items = []
    for i, (lang, a) in enumerate(asks_by_lang(rng, before if rng.random() < 0.5 else after, 60)):
        doc_lang = lang if rng.random() < 0.6 else rng.choice(["en", "es", "de", "fr", "zh", "ru"])
        doc = long_document(rng, doc_lang, rng.randint(8, 40))
        text = f"{a}\n\n{doc}" if i % 2 == 0 else f"{doc}\n\n{a}"
        items.append(Item("long_doc_easy", T, lang, user(text), out_tokens(rng, T) // 4))
    return items


_SMALL_CHAT = [("I'm planning a trip to Portugal in May.", "Great choice! May is a lovely time: warm but not too hot."),
               ("my sister's birthday is tomorrow", "Nice! Do you already have a present for her?"),
               ("I just adopted a kitten", "Congratulations! What's the kitten's name?"),
               ("We're having a barbecue this weekend.", "Sounds fun! Hope the weather stays good."),
               ("I started learning the guitar", "That's great. How long have you been playing?")]
_EASY_LAST = {"en": ["what's the capital of portugal again?", "thanks!! one more: how do you say cheers in Portuguese?",
                     "haha ok. what time zone is Lisbon in?", "cool. how many grams in a pound?",
                     "thanks, that's all", "what should I call her? give me 3 names", "good night!",
                     "can you make that a bit shorter", "lol yes. what's a good gift under 20 euros?",
                     "ok and how do I say happy birthday in Italian?", "is it usually sunny there in May?",
                     "what do kittens eat at 8 weeks?", "nice. any easy song to start with?", "haha true. bye!",
                     "how many km is Lisbon to Porto?", "can you recommend a beach near Lisbon?",
                     "ok cool, what's a good name for a grey kitten?", "thx, see you tomorrow"],
              "es": ["¿y cómo se dice gracias en portugués?", "vale, gracias!", "¿qué playa me recomiendas cerca?",
                     "jaja, ¿y un nombre para un gato gris?"],
              "de": ["Danke! Und wie spät ist es dort jetzt ungefähr?", "super, danke dir", "Was schenke ich ihr "
                     "für unter 20 Euro?"],
              "fr": ["merci ! et il fait quelle température en mai là-bas ?", "d'accord, bonne nuit !"],
              "zh": ["好的，谢谢！", "那里五月份天气怎么样？", "给小猫起个名字吧"],
              "ja": ["ありがとう！", "5月のリスボンは暑いですか？"],
              "ru": ["спасибо! а какая там валюта?", "ладно, спокойной ночи"],
              "pt": ["valeu! e como se diz obrigado em italiano?"]}


@family("chat_followup_easy", T, "multi-turn casual chats whose last ask is easy")
def chat_followup_easy(rng: random.Random) -> list[Item]:
    items = []
    for lang, last in asks_by_lang(rng, _EASY_LAST, 50):
        turns: list[str] = []
        for _ in range(rng.randint(1, 4)):
            u, a = rng.choice(_SMALL_CHAT)
            turns += [u, a]
        items.append(Item("chat_followup_easy", T, lang, convo(*turns, last), out_tokens(rng, T) // 3))
    return items


@family("quick_math", T, "arithmetic and percentages a calculator would do")
def quick_math(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["what's 15% of 80?", "17 * 23", "what is 144 divided by 12", "is 91 a prime number?",
               "what's 2 to the power of 10", "square root of 169?", "how much is 1/3 + 1/4", "round 3.14159 to 2 decimals",
               "what's 7% sales tax on $45", "what is 20 percent off 60", "100 - 37.5?", "what's half of 3/4 cup",
               "average of 4, 8 and 15?", "what is 12 squared", "how much is 250 * 1.2", "is 1000 divisible by 8?",
               "tip 18% on 64 dollars?", "what's 3 dozen", "5! = ?", "which is bigger, 0.7 or 2/3?"],
        "es": ["¿cuánto es el 15 % de 80?", "¿cuánto es 12 por 13?", "raíz cuadrada de 81"],
        "de": ["Was sind 20 % von 150?", "Wie viel ist 17 mal 4?", "Ist 97 eine Primzahl?"],
        "fr": ["Combien font 15 % de 200 ?", "7 fois 8 ?"],
        "pt": ["quanto é 30% de 90?"], "it": ["quanto fa 25 per 4?"],
        "zh": ["80的15%是多少？", "17乘以23等于几？", "144除以12是多少"],
        "ja": ["80の15%はいくつ？", "12×12は？"],
        "ru": ["сколько будет 15% от 80?", "17 умножить на 6"],
    }
    return [Item("quick_math", T, lang, user(a), out_tokens(rng, T) // 5 + 3) for lang, a in asks_by_lang(rng, asks, 40)]


@family("date_time", T, "dates, weekdays, time zones and durations")
def date_time(rng: random.Random) -> list[Item]:
    asks = {
        "en": ["what day of the week is Christmas 2025?", "how many days until new year's eve from december 3?",
               "If it's 3pm in New York what time is it in Berlin?", "Is 2028 a leap year?", "how many weeks in a year?",
               "what's the date 90 days after March 1?", "When does daylight saving time start in the US this year?",
               "what time is 1700 hours?", "how many hours between 9:40 and 17:15?", "what's the time difference "
               "between London and Sydney?", "what month is the 200th day of the year in?"],
        "es": ["¿Qué día de la semana cae el 25 de diciembre de 2025?", "¿Qué hora es en Tokio si en Madrid son las 10?"],
        "de": ["Welcher Wochentag ist der 1. Mai 2026?", "Wie viele Tage hat der Februar 2028?"],
        "fr": ["Quel jour tombe le 14 juillet 2026 ?", "Quelle heure est-il à Montréal quand il est midi à Paris ?"],
        "zh": ["2026年春节是几月几号？", "北京时间晚上八点是纽约几点？"], "ja": ["2026年の元日は何曜日？"],
        "ru": ["Какой день недели будет 9 мая 2026 года?"], "pt": ["Que horas são em Lisboa quando são 15h em São Paulo?"],
    }
    return [Item("date_time", T, lang, user(casing(rng, a)), out_tokens(rng, T) // 4)
            for lang, a in asks_by_lang(rng, asks, 30)]
