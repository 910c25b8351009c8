"""Prose people paste: short texts to classify or rewrite, and paragraphs that make up long documents
(reports, minutes, manuals, articles) in several languages."""

from __future__ import annotations

import random

# Short texts (one to three sentences): reviews, messages, headlines.
SHORT_TEXTS: dict[str, tuple[str, ...]] = {
    "en": (
        "The delivery was two days late and the box was crushed, but the blender itself works great.",
        "Congratulations! You have been selected to receive a free cruise. Click here to claim your prize now.",
        "Our quarterly revenue rose 12% thanks to strong demand in Asia.",
        "I waited 40 minutes for a table and the waiter forgot our drinks twice. Never again.",
        "Reminder: the gym will be closed on Monday for maintenance.",
        "Absolutely love this phone case, fits perfectly and feels sturdy.",
        "Hey, can you send me the slides from yesterday's meeting when you get a chance?",
        "The city council approved the new bike lane on Elm Street after a long debate.",
        "meh. it's fine I guess, nothing special for the price",
        "URGENT: your account has been suspended, verify your password at this link",
    ),
    "es": (
        "El pedido llegó a tiempo y el producto es exactamente como en las fotos. Muy contenta.",
        "La reunión del viernes se pasa al lunes a las diez por la mañana.",
        "Pésimo servicio, nadie contesta el teléfono y ya van tres semanas sin respuesta.",
        "Ha ganado un premio de 5.000 euros, responda con sus datos bancarios para recibirlo.",
        "El nuevo museo abrirá sus puertas en primavera con una exposición sobre el Mediterráneo.",
    ),
    "de": (
        "Die Lieferung kam pünktlich, aber die Anleitung war nur auf Englisch.",
        "Ich bin total begeistert von dem Hotel, das Frühstück war fantastisch!",
        "Der Zug nach München fällt heute wegen eines Streiks aus.",
        "Leider funktioniert das Gerät nach zwei Wochen nicht mehr, sehr enttäuschend.",
        "Bitte denken Sie daran, die Unterlagen bis Freitag einzureichen.",
    ),
    "fr": (
        "Le film était beaucoup trop long, mais les acteurs étaient excellents.",
        "Votre colis a été expédié et arrivera demain entre 9h et 13h.",
        "Service client injoignable, produit défectueux, je ne recommande pas.",
        "La mairie organise une collecte de vêtements samedi prochain sur la place.",
        "Super restaurant, accueil chaleureux et plats délicieux !",
    ),
    "pt": (
        "O produto chegou quebrado e ninguém responde aos meus e-mails.",
        "Adorei o atendimento, rápido e muito educado.",
        "A prefeitura anunciou novas linhas de ônibus para a zona norte.",
    ),
    "it": (
        "Il pacco è arrivato in anticipo e l'imballaggio era perfetto.",
        "Che delusione, la pizza era fredda e il servizio lentissimo.",
    ),
    "zh": (
        "这家餐厅的菜很好吃，但是服务员态度不太好。",
        "明天上午十点开会，请大家准时参加。",
        "恭喜您中奖了！请点击链接领取您的奖品。",
        "快递三天了还没到，客服也联系不上。",
    ),
    "ja": (
        "このイヤホンは音質が良くて、値段も手頃です。",
        "明日の会議は午後二時からに変更になりました。",
        "注文した商品がまだ届きません。どうなっていますか。",
    ),
    "ru": (
        "Доставка была быстрой, но упаковка порвана.",
        "Отличный отель, чисто и уютно, обязательно приедем снова.",
        "Завтра в офисе не будет горячей воды с 9 до 17 часов.",
    ),
}

# Paragraphs of longer documents, by topic; long documents are several of these in a row.
PARAGRAPHS: dict[str, tuple[str, ...]] = {
    "en": (
        "The northern warehouse handled 18,400 orders in March, an increase of nine percent over February. "
        "Most of the growth came from the garden category, which typically peaks in spring. Average picking time "
        "fell from 4.1 to 3.6 minutes per order after the new shelf labels were introduced, although two of the "
        "three night shifts were short-staffed for most of the month.",
        "Attendees agreed to move the product launch from the second to the fourth week of May. Marketing asked "
        "for more time to prepare the campaign, and the support team wants the help-center articles translated "
        "into Spanish and Portuguese before customers see the new features. Priya will send the revised timeline "
        "by Thursday, and the next meeting is scheduled for 14 April at 10:00.",
        "To reset the thermostat, hold the mode button for ten seconds until the display flashes. The device will "
        "restart and ask you to choose a language, a temperature unit and a schedule. If the display stays blank, "
        "check that the batteries are inserted with the correct polarity and that the wall plate is firmly "
        "attached. Factory settings can also be restored from the mobile app under Settings, Device, Reset.",
        "The old town sits on a small hill above the river, and most of its streets are too narrow for cars. "
        "Visitors usually start at the market square, where a farmers' market runs every Saturday morning, and "
        "walk up to the castle ruins for the view. The museum of local history is free on the first Sunday of "
        "each month, and the ferry to the islands leaves from the harbour every two hours in summer.",
        "Employees may work remotely up to three days per week, subject to their manager's approval. Remote days "
        "should be recorded in the HR portal by the Friday of the preceding week. Equipment provided by the "
        "company remains company property and must be returned within ten working days of the end of "
        "employment. Expenses for home internet are reimbursed up to 30 euros per month with a valid invoice.",
        "The survey was completed by 1,214 residents between January and March. A majority said they would use "
        "public transport more often if buses ran every ten minutes during rush hour, and nearly half mentioned "
        "safety concerns about cycling on the main roads. Younger respondents were more likely to support a "
        "congestion charge, while older respondents prioritised more parking near the hospital.",
        "Our volunteers planted 420 trees along the river path this autumn, mostly native oaks, alders and wild "
        "cherries. The city provided the saplings and the local scout group organised two weekends of digging. "
        "We still need people to water the young trees during dry spells next summer; a rota will be shared at "
        "the general meeting in January, together with the accounts for the year.",
        "The first chapter follows Marta, a lighthouse keeper on a remote island, as she receives a letter from a "
        "brother she has not seen in twenty years. The letter asks for nothing but announces his arrival on the "
        "next supply boat. Over the following days she repaints the kitchen, rearranges the spare room and "
        "rehearses conversations she never manages to finish, while a storm slowly builds to the west.",
        "Revenue for the third quarter was 48.2 million dollars, up from 41.7 million a year earlier. Gross margin "
        "improved to 38 percent as freight costs normalised. Operating expenses increased because of the new "
        "office in Lisbon and higher marketing spend ahead of the holiday season. The company ended the quarter "
        "with 22 million in cash and no long-term debt.",
        "Participants in the pilot programme reported sleeping on average 35 minutes longer after eight weeks of "
        "the evening routine. The routine consisted of dimming lights an hour before bed, avoiding screens, and a "
        "short breathing exercise. Dropout was low, at six percent, and most participants said they would "
        "continue with at least part of the routine after the study ended.",
        "Section 4 of the lease states that the tenant is responsible for minor repairs up to 150 euros per "
        "incident, while structural repairs, heating and plumbing remain the landlord's responsibility. Rent is "
        "due on the third working day of each month. Either party may terminate the contract with three months' "
        "notice in writing, except during the first year of the tenancy.",
        "The library will extend its opening hours during the exam period, from 8:00 to 23:00 on weekdays and "
        "from 10:00 to 20:00 at weekends. Group study rooms can be booked for up to three hours per day through "
        "the student portal. Please note that food is not allowed on the upper floors and that laptops left "
        "unattended for more than thirty minutes may be moved to the front desk.",
    ),
    "es": (
        "El ayuntamiento presentó ayer el plan de movilidad para los próximos cinco años. Entre las medidas más "
        "destacadas está la ampliación de la red de carriles bici, la peatonalización de tres calles del centro y "
        "un nuevo aparcamiento disuasorio junto a la estación. Los comerciantes pidieron más plazas de carga y "
        "descarga, y la oposición criticó la falta de un calendario concreto.",
        "Para solicitar la beca, los estudiantes deben presentar el formulario firmado, una copia del documento "
        "de identidad y el certificado de notas del último curso. El plazo termina el 30 de septiembre y las "
        "solicitudes incompletas no se tendrán en cuenta. La resolución se publicará en la web de la universidad "
        "durante la segunda quincena de noviembre.",
        "La empresa cerró el año con unas ventas de 12,3 millones de euros, un 8 % más que el ejercicio anterior. "
        "El crecimiento se concentró en el mercado portugués y en la línea de productos ecológicos. Los costes de "
        "personal aumentaron por la contratación de quince personas en el área de logística.",
        "En la reunión del comité se acordó organizar la fiesta del barrio el segundo sábado de junio. Habrá "
        "actividades para niños por la mañana, una comida popular a mediodía y un concierto por la noche en la "
        "plaza. Se necesitan voluntarios para el montaje de las mesas y para la limpieza del domingo.",
    ),
    "de": (
        "Die Gemeinde plant, die Grundschule bis zum Herbst 2026 um vier Klassenzimmer zu erweitern. Die Kosten "
        "werden auf 3,2 Millionen Euro geschätzt, wovon das Land etwa die Hälfte übernimmt. Während der Bauzeit "
        "wird der Unterricht teilweise in Containern auf dem Sportplatz stattfinden.",
        "Bitte lesen Sie diese Bedienungsanleitung vollständig, bevor Sie das Gerät in Betrieb nehmen. Das Gerät "
        "darf nur in trockenen Räumen verwendet werden. Vor der Reinigung ist der Netzstecker zu ziehen. Bei "
        "Störungen wenden Sie sich an den Kundendienst; öffnen Sie das Gehäuse nicht selbst.",
        "Im vergangenen Quartal stieg der Umsatz um sieben Prozent auf 84 Millionen Euro. Besonders gut entwickelte "
        "sich das Geschäft mit Ersatzteilen, während der Verkauf neuer Maschinen leicht zurückging. Der Vorstand "
        "erwartet für das Gesamtjahr ein moderates Wachstum.",
        "Die Wanderung beginnt am Parkplatz hinter der Kirche und führt zunächst durch einen dichten Buchenwald. "
        "Nach etwa einer Stunde erreicht man eine Hütte mit Blick auf den See, wo man im Sommer einkehren kann. "
        "Der Rückweg verläuft am Bach entlang und ist bei Regen rutschig.",
    ),
    "fr": (
        "La médiathèque municipale propose désormais des ateliers numériques gratuits pour les seniors, chaque "
        "mardi après-midi. Les participants apprennent à utiliser une tablette, à envoyer des courriels et à faire "
        "des démarches administratives en ligne. L'inscription se fait à l'accueil ou par téléphone.",
        "Le conseil d'administration a approuvé les comptes de l'exercice 2023, qui font apparaître un excédent "
        "de 42 000 euros. Cette somme sera affectée à la rénovation de la salle polyvalente. Le montant de la "
        "cotisation annuelle reste inchangé.",
        "Le sentier côtier relie les deux villages en environ trois heures de marche. Il longe des falaises "
        "spectaculaires et traverse plusieurs petites criques où l'on peut se baigner à marée basse. Prévoyez de "
        "l'eau et de bonnes chaussures, car il n'y a aucun point de ravitaillement sur le parcours.",
        "Les résultats de l'enquête montrent que les habitants sont globalement satisfaits de la propreté des rues, "
        "mais qu'ils souhaitent davantage d'espaces verts et de bancs. Les jeunes demandent un skatepark, tandis que "
        "les familles réclament des aires de jeux mieux entretenues.",
    ),
    "pt": (
        "A escola vai realizar a feira de ciências no dia 18 de outubro, no ginásio. Cada turma apresentará um "
        "projeto e os pais estão convidados a visitar os estandes entre as 14h e as 18h. Haverá também uma "
        "pequena cantina organizada pela associação de pais.",
        "O relatório anual mostra um aumento de 15% no número de visitantes do parque natural. A maioria veio nos "
        "meses de verão e procurou as trilhas mais curtas. A administração pretende ampliar o estacionamento e "
        "instalar novas placas de sinalização.",
    ),
    "it": (
        "Il comune ha annunciato la chiusura temporanea del ponte vecchio per lavori di manutenzione, che dureranno "
        "circa sei settimane. Il traffico sarà deviato sulla circonvallazione e saranno potenziate le corse degli "
        "autobus tra le due sponde del fiume.",
        "Il corso di fotografia si terrà ogni giovedì sera dalle 20 alle 22 presso il centro culturale. Le lezioni "
        "teoriche saranno alternate a uscite pratiche nel centro storico. Il numero massimo di partecipanti è "
        "quindici.",
    ),
    "zh": (
        "本公司第三季度营业收入为五亿二千万元，同比增长百分之十一。增长主要来自线上渠道和海外市场。"
        "由于原材料价格上涨，毛利率较去年同期略有下降。公司计划在明年上半年开设两家新的门店。",
        "图书馆将于下周一起调整开放时间，工作日从早上八点开放至晚上十点，周末从上午九点开放至下午六点。"
        "考试期间，自习室需要通过学校网站提前预约，每人每天最多预约三个小时。",
        "这次徒步路线全长约十二公里，起点在山脚下的停车场。前半段是平缓的林间小路，后半段需要爬一段较陡的石阶。"
        "建议携带足够的饮用水，山顶没有商店。",
    ),
    "ja": (
        "当社の今期の売上高は前年同期比8%増の120億円となりました。主な要因は海外事業の拡大と新製品の好調な販売です。"
        "一方で、原材料費の上昇により営業利益率はわずかに低下しました。",
        "市立図書館は来月から開館時間を延長し、平日は午後九時まで利用できるようになります。"
        "また、自習室の予約はオンラインで受け付けます。",
    ),
    "ru": (
        "В отчёте за третий квартал компания сообщила о росте выручки на девять процентов. Основной вклад внесли "
        "продажи через интернет-магазин и новые региональные склады. Расходы на логистику выросли из-за "
        "подорожания топлива.",
        "Городская библиотека продлевает часы работы на время сессии: по будням с восьми утра до одиннадцати "
        "вечера, по выходным с десяти до восьми. Места в читальном зале можно забронировать на сайте.",
    ),
}


def long_document(rng: random.Random, lang: str, paragraphs: int) -> str:
    """``paragraphs`` paragraphs in ``lang`` (falling back to English), as one pasted document."""
    pool = PARAGRAPHS.get(lang) or PARAGRAPHS["en"]
    out = []
    while len(out) < paragraphs:
        batch = list(pool)
        rng.shuffle(batch)
        out.extend(batch)
    return "\n\n".join(out[:paragraphs])
