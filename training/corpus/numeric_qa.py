"""Spoken-QA passages with numeric facts, and questions about them in English, German, Italian, Chinese.

Each template is a short everyday passage (a timetable, a recipe, a match result) with two or
three numbers in it. Every numbered fact has a question written in each of the four languages;
the answer is the number as written in the passage (digits, a time like 9:45, a digit string),
which reads the same in every language, so one reference answer is right for all four.
Questions never name the passage's people or places, so none of them needs translating.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tympan.training.corpus.items import QA

Values = dict[str, str]
Slot = Callable[[random.Random, Values], str | Mapping[str, str]]


@dataclass(frozen=True)
class Template:
    name: str
    passages: tuple[str, ...]  # English phrasings; each mentions every slot a question asks about
    slots: Mapping[str, Slot]  # filled in order; a slot may depend on the ones before it
    questions: Mapping[str, Mapping[str, str]]  # answer slot -> lang -> question (may use slot values)


# --- slot makers ----------------------------------------------------------------------------


def num(lo: int, hi: int, step: int = 1) -> Slot:
    return lambda rng, _v: str(rng.randrange(lo, hi + 1, step))


def below(slot: str, lo: int, gap: int = 1) -> Slot:
    """An integer from lo up to `gap` less than an earlier slot."""
    return lambda rng, v: str(rng.randint(lo, int(v[slot]) - gap))


def clock(first_hour: int, last_hour: int, minute_step: int = 5) -> Slot:
    def make(rng: random.Random, _v: Values) -> str:
        return f"{rng.randint(first_hour, last_hour)}:{rng.randrange(0, 60, minute_step):02d}"

    return make


def digits(n: int) -> Slot:
    return lambda rng, _v: "".join(str(rng.randrange(10)) for _ in range(n))


def phone(rng: random.Random, _v: Values) -> str:
    return f"0{rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(100, 999)}"


def pick(options: tuple[str, ...]) -> Slot:
    return lambda rng, _v: rng.choice(options)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def ordinal_of(slot: str) -> Slot:
    return lambda _rng, v: ordinal(int(v[slot]))


CITIES = (
    "Lyon", "Berlin", "Vienna", "Milan", "Naples", "Hamburg", "Zurich", "Geneva", "Munich", "Turin",
    "Madrid", "Lisbon", "Porto", "Dublin", "Edinburgh", "Oslo", "Stockholm", "Helsinki", "Prague", "Krakow",
    "Budapest", "Athens", "Seville", "Valencia", "Marseille", "Toulouse", "Bordeaux", "Antwerp", "Rotterdam",
    "Copenhagen", "Shanghai", "Beijing", "Toronto", "Boston", "Chicago", "Denver", "Sydney", "Melbourne",
    "Nairobi", "Cairo", "Istanbul", "Salzburg", "Bologna", "Florence", "Verona", "Cologne", "Dresden", "Leeds",
)
TOWNS = (
    "Millbrook", "Ashford Green", "Eastwick", "Hollowmere", "Northam", "Stoneleigh", "Westbury Vale",
    "Fairhaven", "Oakridge", "Brackenfield", "Redwater", "Kingsmoor", "Elmstead", "Thornbury Cross",
)
WOMEN = (
    "Anna", "Maria", "Sophie", "Laura", "Chiara", "Giulia", "Emma", "Lena", "Mei", "Yuki", "Fatima", "Olivia",
    "Hannah", "Clara", "Elena", "Sara", "Nadia", "Priya", "Ingrid", "Rosa", "Alice", "Martha", "Lucia", "Helen",
)
NAMES = (*WOMEN, "Marco", "Luca", "Thomas", "David", "Jonas", "Paul", "Wei", "Omar", "Daniel", "Peter", "Samuel")
SURNAMES = (
    "Keller", "Rossi", "Moretti", "Schmidt", "Wagner", "Bianchi", "Novak", "Fischer", "Ferrari", "Lang",
    "Morgan", "Patel", "Chen", "Okafor", "Larsen", "Costa", "Meyer", "Hughes", "Ricci", "Brandt",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

# Things bought at a market: English, German, Italian (plural, gender), Chinese (noun, measure word).
GOODS = (
    ("apples", "Äpfel", "mele", "f", "苹果", "个"),
    ("oranges", "Orangen", "arance", "f", "橙子", "个"),
    ("lemons", "Zitronen", "limoni", "m", "柠檬", "个"),
    ("eggs", "Eier", "uova", "f", "鸡蛋", "个"),
    ("bread rolls", "Brötchen", "panini", "m", "面包", "个"),
    ("bottles of water", "Flaschen Wasser", "bottiglie d'acqua", "f", "水", "瓶"),
    ("pencils", "Bleistifte", "matite", "f", "铅笔", "支"),
    ("notebooks", "Hefte", "quaderni", "m", "笔记本", "本"),
    ("tomatoes", "Tomaten", "pomodori", "m", "西红柿", "个"),
    ("postcards", "Postkarten", "cartoline", "f", "明信片", "张"),
    ("candles", "Kerzen", "candele", "f", "蜡烛", "根"),
    ("melons", "Melonen", "meloni", "m", "甜瓜", "个"),
)


def goods(rng: random.Random, _v: Values) -> Mapping[str, str]:
    en, de, it, gender, zh, measure = rng.choice(GOODS)
    ending = "e" if gender == "f" else "i"
    return {
        "goods": en,
        "goods_de": de,
        "goods_it": f"Quant{ending} {it} sono stat{ending} comprat{ending}?",
        "goods_zh": f"买了多少{measure}{zh}？",
    }


def q(en: str, de: str, it: str, zh: str) -> Mapping[str, str]:
    return {"en": en, "de": de, "it": it, "zh": zh}


# --- the templates ---------------------------------------------------------------------------

TEMPLATES: tuple[Template, ...] = (
    Template(
        "train",
        (
            "The train to {city} leaves from platform {platform} at {time}, and the journey takes {minutes} minutes.",
            "Your train to {city} departs at {time} from platform {platform}. The trip takes {minutes} minutes.",
        ),
        {"city": pick(CITIES), "platform": num(1, 24), "time": clock(5, 22), "minutes": num(25, 240, 5)},
        {
            "platform": q("From which platform does the train leave?", "Von welchem Gleis fährt der Zug ab?",
                          "Da quale binario parte il treno?", "火车从几号站台出发？"),
            "time": q("At what time does the train leave?", "Um wie viel Uhr fährt der Zug ab?",
                      "A che ora parte il treno?", "火车几点出发？"),
            "minutes": q("How many minutes does the journey take?", "Wie viele Minuten dauert die Fahrt?",
                         "Quanti minuti dura il viaggio?", "这趟旅程需要多少分钟？"),
        },
    ),
    Template(
        "meeting",
        (
            "The project meeting takes place in room {room} on floor {floor} and starts at {time}.",
            "We meet at {time} in room {room}, which is on floor {floor}.",
        ),
        {"floor": num(2, 9), "room": lambda rng, v: f"{v['floor']}{rng.randint(1, 40):02d}", "time": clock(8, 17, 15)},
        {
            "room": q("In which room is the meeting?", "In welchem Raum findet das Treffen statt?",
                      "In quale stanza si tiene la riunione?", "会议在哪个房间举行？"),
            "floor": q("On which floor is the meeting room?", "Auf welcher Etage liegt der Raum?",
                       "A quale piano si trova la stanza?", "会议室在几楼？"),
            "time": q("At what time does the meeting start?", "Um wie viel Uhr beginnt das Treffen?",
                      "A che ora inizia la riunione?", "会议几点开始？"),
        },
    ),
    Template(
        "boarding",
        (
            "The flight to {city} boards at gate {gate} at {time}. Each passenger may bring one bag of up to {kg}"
            " kilograms.",
            "Boarding for {city} starts at {time} at gate {gate}, and checked bags may weigh at most {kg} kilograms.",
        ),
        {"city": pick(CITIES), "gate": num(1, 60), "time": clock(5, 23), "kg": num(7, 32)},
        {
            "gate": q("At which gate does boarding take place?", "An welchem Gate ist das Boarding?",
                      "A quale gate avviene l'imbarco?", "在几号登机口登机？"),
            "time": q("At what time does boarding start?", "Um wie viel Uhr beginnt das Boarding?",
                      "A che ora inizia l'imbarco?", "几点开始登机？"),
            "kg": q("How many kilograms may a bag weigh at most?",
                    "Wie viele Kilogramm darf ein Gepäckstück höchstens wiegen?",
                    "Quanti chilogrammi può pesare al massimo un bagaglio?", "一件行李最多可以重多少公斤？"),
        },
    ),
    Template(
        "market",
        (
            "At the market, {name} bought {count} {goods} for {price} euros.",
            "{name} paid {price} euros for {count} {goods} this morning.",
        ),
        {"name": pick(NAMES), "item": goods, "count": num(2, 19), "price": num(3, 60)},
        {
            "count": q("How many {goods} were bought?", "Wie viele {goods_de} wurden gekauft?", "{goods_it}",
                       "{goods_zh}"),
            "price": q("How many euros were paid?", "Wie viele Euro wurden bezahlt?",
                       "Quanti euro sono stati pagati?", "一共付了多少欧元？"),
        },
    ),
    Template(
        "grandmother",
        (
            "My grandmother was born in {year} and has {grandchildren} grandchildren.",
            "Grandma {name} was born in {year}; today she has {grandchildren} grandchildren.",
        ),
        {"name": pick(WOMEN), "year": num(1925, 1962), "grandchildren": num(2, 14)},
        {
            "year": q("In which year was the grandmother born?", "In welchem Jahr wurde die Großmutter geboren?",
                      "In che anno è nata la nonna?", "奶奶是哪一年出生的？"),
            "grandchildren": q("How many grandchildren does she have?", "Wie viele Enkelkinder hat sie?",
                               "Quanti nipoti ha?", "她有几个孙子孙女？"),
        },
    ),
    Template(
        "football",
        (
            "FC {city} beat their rivals {goals1} to {goals2} in front of {crowd} spectators.",
            "In front of {crowd} fans, FC {city} won the match {goals1} to {goals2}.",
        ),
        {"city": pick(CITIES), "goals1": num(2, 7), "goals2": below("goals1", 0), "crowd": num(1200, 9800, 50)},
        {
            "goals1": q("How many goals did the winning team score?",
                        "Wie viele Tore erzielte die siegreiche Mannschaft?",
                        "Quanti gol ha segnato la squadra vincitrice?", "获胜的球队进了几个球？"),
            "goals2": q("How many goals did the losing team score?",
                        "Wie viele Tore erzielte die unterlegene Mannschaft?",
                        "Quanti gol ha segnato la squadra sconfitta?", "输掉的球队进了几个球？"),
            "crowd": q("How many spectators watched the match?", "Wie viele Zuschauer sahen das Spiel?",
                       "Quanti spettatori hanno assistito alla partita?", "有多少名观众观看了这场比赛？"),
        },
    ),
    Template(
        "weather",
        (
            "Tomorrow in {city} the temperature will reach {temp} degrees, and there is a {rain} percent chance"
            " of rain.",
            "The forecast for {city}: highs of {temp} degrees and a {rain} percent chance of showers.",
        ),
        {"city": pick(CITIES), "temp": num(3, 38), "rain": num(10, 90, 5)},
        {
            "temp": q("How many degrees will the temperature reach?", "Wie viele Grad wird die Temperatur erreichen?",
                      "Quanti gradi raggiungerà la temperatura?", "气温最高会达到多少度？"),
            "rain": q("What is the chance of rain, in percent?", "Wie hoch ist die Regenwahrscheinlichkeit in Prozent?",
                      "Qual è la probabilità di pioggia, in percentuale?", "下雨的概率是百分之多少？"),
        },
    ),
    Template(
        "library",
        (
            "The library opens at {open} and closes at {close}, and you can borrow up to {books} books at a time.",
            "You may borrow {books} books at once; the library is open from {open} until {close}.",
        ),
        {"open": clock(7, 10, 15), "close": clock(17, 21, 15), "books": num(3, 20)},
        {
            "open": q("At what time does the library open?", "Um wie viel Uhr öffnet die Bibliothek?",
                      "A che ora apre la biblioteca?", "图书馆几点开门？"),
            "close": q("At what time does the library close?", "Um wie viel Uhr schließt die Bibliothek?",
                       "A che ora chiude la biblioteca?", "图书馆几点关门？"),
            "books": q("How many books can you borrow at a time?", "Wie viele Bücher kann man auf einmal ausleihen?",
                       "Quanti libri si possono prendere in prestito alla volta?", "一次最多可以借几本书？"),
        },
    ),
    Template(
        "hotel",
        (
            "Your hotel room is number {room}. Breakfast is served until {breakfast}, and checkout is at {checkout}.",
            "Checkout is at {checkout}, breakfast is served until {breakfast}, and your room number is {room}.",
        ),
        {"room": num(101, 899), "breakfast": clock(9, 10, 30), "checkout": lambda rng, _v: rng.choice(
            ("11:00", "11:30", "12:00", "12:30"))},
        {
            "room": q("What is the room number?", "Welche Nummer hat das Zimmer?", "Qual è il numero della camera?",
                      "房间号是多少？"),
            "breakfast": q("Until what time is breakfast served?", "Bis wie viel Uhr gibt es Frühstück?",
                           "Fino a che ora viene servita la colazione?", "早餐供应到几点？"),
            "checkout": q("At what time is checkout?", "Um wie viel Uhr ist der Check-out?",
                          "A che ora è il check-out?", "几点退房？"),
        },
    ),
    Template(
        "cake",
        (
            "Bake the cake at {temp} degrees for {minutes} minutes; the recipe needs {eggs} eggs.",
            "For this cake you need {eggs} eggs. Bake it for {minutes} minutes at {temp} degrees.",
        ),
        {"temp": num(160, 220, 10), "minutes": num(20, 75, 5), "eggs": num(2, 6)},
        {
            "temp": q("At how many degrees should the cake be baked?", "Bei wie viel Grad soll der Kuchen backen?",
                      "A quanti gradi va cotta la torta?", "蛋糕应该用多少度烤？"),
            "minutes": q("For how many minutes should the cake bake?", "Wie viele Minuten soll der Kuchen backen?",
                         "Per quanti minuti deve cuocere la torta?", "蛋糕要烤多少分钟？"),
            "eggs": q("How many eggs does the recipe need?", "Wie viele Eier braucht man für das Rezept?",
                      "Quante uova servono per la ricetta?", "这个食谱需要几个鸡蛋？"),
        },
    ),
    Template(
        "bus",
        (
            "Bus number {line} goes to the city centre every {every} minutes, and the last one leaves at {time}.",
            "To get to the city centre, take bus {line}. It runs every {every} minutes, and the last one leaves"
            " at {time}.",
        ),
        {"line": num(2, 99), "every": num(5, 30, 5), "time": clock(21, 23)},
        {
            "line": q("Which bus line goes to the city centre?", "Welche Buslinie fährt ins Stadtzentrum?",
                      "Quale linea di autobus va in centro?", "哪路公交车开往市中心？"),
            "every": q("How often does the bus run, in minutes?", "Alle wie viele Minuten fährt der Bus?",
                       "Ogni quanti minuti passa l'autobus?", "公交车每隔几分钟一班？"),
            "time": q("At what time does the last bus leave?", "Um wie viel Uhr fährt der letzte Bus?",
                      "A che ora parte l'ultimo autobus?", "末班车几点发车？"),
        },
    ),
    Template(
        "bridge",
        (
            "The old stone bridge was built in {year} and is {length} metres long.",
            "Built in {year}, the bridge over the river is {length} metres long.",
        ),
        {"year": num(1500, 1990), "length": num(40, 2400, 5)},
        {
            "year": q("In which year was the bridge built?", "In welchem Jahr wurde die Brücke gebaut?",
                      "In che anno è stato costruito il ponte?", "这座桥是哪一年建成的？"),
            "length": q("How long is the bridge, in metres?", "Wie viele Meter ist die Brücke lang?",
                        "Quanti metri è lungo il ponte?", "这座桥有多少米长？"),
        },
    ),
    Template(
        "tower",
        (
            "The tower is {height} metres tall and was completed in {year}; {steps} steps lead to the top.",
            "Completed in {year}, the tower is {height} metres tall, and {steps} steps lead up to its viewing"
            " platform.",
        ),
        {"height": num(25, 320), "year": num(1200, 2015), "steps": num(120, 1600)},
        {
            "height": q("How tall is the tower, in metres?", "Wie viele Meter ist der Turm hoch?",
                        "Quanti metri è alta la torre?", "这座塔有多少米高？"),
            "year": q("In which year was the tower completed?", "In welchem Jahr wurde der Turm fertiggestellt?",
                      "In che anno è stata completata la torre?", "这座塔是哪一年建成的？"),
            "steps": q("How many steps lead to the top?", "Wie viele Stufen führen nach oben?",
                       "Quanti gradini portano in cima?", "有多少级台阶通往顶部？"),
        },
    ),
    Template(
        "helpdesk",
        (
            "You can reach the help desk on extension {ext} between {start} and {end}.",
            "The help desk answers calls from {start} to {end}; dial extension {ext}.",
        ),
        {"ext": num(2000, 8999), "start": clock(7, 9, 30), "end": clock(16, 19, 30)},
        {
            "ext": q("What is the extension of the help desk?", "Unter welcher Durchwahl erreicht man den Helpdesk?",
                     "Qual è il numero interno dell'help desk?", "服务台的分机号是多少？"),
            "start": q("From what time can you reach the help desk?", "Ab wie viel Uhr ist der Helpdesk erreichbar?",
                       "Da che ora si può contattare l'help desk?", "服务台从几点开始可以联系？"),
            "end": q("Until what time can you reach the help desk?", "Bis wie viel Uhr ist der Helpdesk erreichbar?",
                     "Fino a che ora si può contattare l'help desk?", "服务台可以联系到几点？"),
        },
    ),
    Template(
        "town",
        (
            "The town of {town} has {people} inhabitants and was founded in {year}.",
            "Founded in {year}, {town} is now home to {people} people.",
        ),
        {"town": pick(TOWNS), "people": num(1200, 9800), "year": num(800, 1900)},
        {
            "people": q("How many people live in the town?", "Wie viele Einwohner hat der Ort?",
                        "Quanti abitanti ha il paese?", "这个小镇有多少居民？"),
            "year": q("In which year was the town founded?", "In welchem Jahr wurde der Ort gegründet?",
                      "In che anno è stato fondato il paese?", "这个小镇是哪一年建立的？"),
        },
    ),
    Template(
        "race",
        (
            "The runner wearing number {bib} finished the race in {minutes} minutes. She came {place_ord}.",
            "Wearing bib number {bib}, she crossed the line after {minutes} minutes, in {place_ord} place.",
        ),
        {"bib": num(100, 999), "minutes": num(28, 240), "place": num(1, 40), "place_ord": ordinal_of("place")},
        {
            "bib": q("What was the runner's bib number?", "Welche Startnummer trug die Läuferin?",
                     "Quale numero di pettorale aveva la podista?", "这位跑者的号码布是几号？"),
            "minutes": q("In how many minutes did she finish the race?", "In wie vielen Minuten lief sie ins Ziel?",
                         "In quanti minuti ha concluso la gara?", "她用了多少分钟跑完比赛？"),
            "place": q("In which place did she finish?", "Auf welchem Platz landete sie?",
                       "In quale posizione si è classificata?", "她获得了第几名？"),
        },
    ),
    Template(
        "doctor",
        (
            "Your appointment with Doctor {surname} is on {month} {day} at {time}, in room {room}.",
            "Doctor {surname} will see you in room {room} at {time} on the {day_ord} of {month}.",
        ),
        {"surname": pick(SURNAMES), "month": pick(MONTHS), "day": num(1, 28), "day_ord": ordinal_of("day"),
         "time": clock(8, 17, 15), "room": num(2, 60)},
        {
            "day": q("On which day of the month is the appointment?", "An welchem Tag des Monats ist der Termin?",
                     "In che giorno del mese è l'appuntamento?", "预约在这个月的几号？"),
            "time": q("At what time is the appointment?", "Um wie viel Uhr ist der Termin?",
                      "A che ora è l'appuntamento?", "预约是几点？"),
            "room": q("In which room is the appointment?", "In welchem Raum ist der Termin?",
                      "In quale stanza è l'appuntamento?", "预约在几号房间？"),
        },
    ),
    Template(
        "parking",
        (
            "Parking here costs {price} euros per hour, and the car park has {spaces} spaces on {levels} levels.",
            "The car park has {levels} levels with {spaces} spaces in total; an hour costs {price} euros.",
        ),
        {"price": num(1, 9), "spaces": num(120, 2400, 10), "levels": num(2, 8)},
        {
            "price": q("How many euros does parking cost per hour?", "Wie viele Euro kostet das Parken pro Stunde?",
                       "Quanti euro costa il parcheggio all'ora?", "停车每小时多少欧元？"),
            "spaces": q("How many parking spaces are there?", "Wie viele Stellplätze gibt es?",
                        "Quanti posti auto ci sono?", "一共有多少个停车位？"),
            "levels": q("How many levels does the car park have?", "Wie viele Ebenen hat das Parkhaus?",
                        "Quanti piani ha il parcheggio?", "停车场有几层？"),
        },
    ),
    Template(
        "class",
        (
            "There are {pupils} pupils in the class, and {girls} of them are girls.",
            "Of the {pupils} pupils in this class, {girls} are girls.",
        ),
        {"pupils": num(14, 32), "girls": below("pupils", 3, 3)},
        {
            "pupils": q("How many pupils are in the class?", "Wie viele Kinder sind in der Klasse?",
                        "Quanti alunni ci sono nella classe?", "班里有多少名学生？"),
            "girls": q("How many of them are girls?", "Wie viele davon sind Mädchen?",
                       "Quante di loro sono bambine?", "其中有多少名女生？"),
        },
    ),
    Template(
        "concert",
        (
            "The concert starts at {time}, tickets cost {price} euros, and the hall has {seats} seats.",
            "Tickets for the concert cost {price} euros. The music starts at {time}, and there are {seats} seats.",
        ),
        {"time": clock(18, 21, 15), "price": num(12, 95), "seats": num(150, 2500, 10)},
        {
            "time": q("At what time does the concert start?", "Um wie viel Uhr beginnt das Konzert?",
                      "A che ora inizia il concerto?", "音乐会几点开始？"),
            "price": q("How many euros does a ticket cost?", "Wie viele Euro kostet eine Eintrittskarte?",
                       "Quanti euro costa un biglietto?", "一张票多少欧元？"),
            "seats": q("How many seats are there?", "Wie viele Plätze gibt es?", "Quanti posti ci sono?",
                       "一共有多少个座位？"),
        },
    ),
    Template(
        "tablets",
        (
            "Take {tablets} tablets a day for {days} days. The pack contains {pack} tablets.",
            "The pack contains {pack} tablets: take {tablets} a day for {days} days.",
        ),
        {"tablets": num(1, 4), "days": num(5, 14), "pack": num(20, 60, 10)},
        {
            "tablets": q("How many tablets should be taken per day?", "Wie viele Tabletten soll man pro Tag nehmen?",
                         "Quante compresse bisogna prendere al giorno?", "每天应该吃几片药？"),
            "days": q("For how many days should the tablets be taken?",
                      "Wie viele Tage lang soll man die Tabletten nehmen?",
                      "Per quanti giorni bisogna prendere le compresse?", "这种药要连续吃几天？"),
            "pack": q("How many tablets are in the pack?", "Wie viele Tabletten enthält die Packung?",
                      "Quante compresse contiene la confezione?", "一盒里有多少片药？"),
        },
    ),
    Template(
        "novel",
        (
            "The novel has {pages} pages and was first published in {year}; it has been translated into {langs}"
            " languages.",
            "First published in {year}, the novel runs to {pages} pages and has appeared in {langs} languages.",
        ),
        {"pages": num(120, 980), "year": num(1850, 2020), "langs": num(3, 60)},
        {
            "pages": q("How many pages does the novel have?", "Wie viele Seiten hat der Roman?",
                       "Quante pagine ha il romanzo?", "这部小说有多少页？"),
            "year": q("In which year was the novel first published?",
                      "In welchem Jahr erschien der Roman zum ersten Mal?",
                      "In che anno è stato pubblicato per la prima volta il romanzo?", "这部小说是哪一年首次出版的？"),
            "langs": q("In how many languages has the novel appeared?",
                       "In wie vielen Sprachen ist der Roman erschienen?", "In quante lingue è uscito il romanzo?",
                       "这部小说已经以多少种语言出版？"),
        },
    ),
    Template(
        "summit",
        (
            "The summit is {height} metres high, and the climb from the village takes {hours} hours.",
            "From the village it takes {hours} hours to climb to the summit, which is {height} metres high.",
        ),
        {"height": num(1200, 4800, 5), "hours": num(2, 9)},
        {
            "height": q("How high is the summit, in metres?", "Wie viele Meter hoch ist der Gipfel?",
                        "Quanti metri è alta la vetta?", "山顶有多少米高？"),
            "hours": q("How many hours does the climb take?", "Wie viele Stunden dauert der Aufstieg?",
                       "Quante ore dura la salita?", "登顶需要几个小时？"),
        },
    ),
    Template(
        "parcel",
        (
            "Your parcel weighs {kg} kilograms and will arrive in {days} days; the tracking number ends in {code}.",
            "The parcel, tracking number ending in {code}, weighs {kg} kilograms and arrives in {days} days.",
        ),
        {"kg": num(1, 30), "days": num(2, 9), "code": digits(4)},
        {
            "kg": q("How many kilograms does the parcel weigh?", "Wie viele Kilogramm wiegt das Paket?",
                    "Quanti chilogrammi pesa il pacco?", "包裹重多少公斤？"),
            "days": q("In how many days will the parcel arrive?", "In wie vielen Tagen kommt das Paket an?",
                      "Tra quanti giorni arriverà il pacco?", "包裹几天后送到？"),
            "code": q("What digits does the tracking number end in?",
                      "Auf welche Ziffern endet die Sendungsnummer?",
                      "Con quali cifre finisce il numero di tracciamento?", "运单号的最后几位数字是什么？"),
        },
    ),
    Template(
        "cinema",
        (
            "The film starts at {time} in screen {screen} and lasts {minutes} minutes.",
            "Screen {screen} shows the film at {time}; it runs for {minutes} minutes.",
        ),
        {"time": clock(14, 22, 15), "screen": num(1, 12), "minutes": num(85, 190)},
        {
            "time": q("At what time does the film start?", "Um wie viel Uhr beginnt der Film?",
                      "A che ora inizia il film?", "电影几点开始？"),
            "screen": q("In which screen is the film shown?", "In welchem Saal läuft der Film?",
                        "In quale sala viene proiettato il film?", "电影在几号厅放映？"),
            "minutes": q("How many minutes does the film last?", "Wie viele Minuten dauert der Film?",
                         "Quanti minuti dura il film?", "这部电影有多少分钟？"),
        },
    ),
    Template(
        "door",
        (
            "The door code is {code}, and the flat is on floor {floor}.",
            "Go up to floor {floor}; the code for the door is {code}.",
        ),
        {"code": digits(4), "floor": num(1, 12)},
        {
            "code": q("What is the door code?", "Wie lautet der Türcode?", "Qual è il codice della porta?",
                      "门禁密码是多少？"),
            "floor": q("On which floor is the flat?", "In welchem Stockwerk liegt die Wohnung?",
                       "A quale piano si trova l'appartamento?", "公寓在几楼？"),
        },
    ),
    Template(
        "phone",
        (
            "You can call {name} on {phone}, but only after {time}.",
            "{name}'s new number is {phone}; the best time to call is after {time}.",
        ),
        {"name": pick(NAMES), "phone": phone, "time": clock(8, 20, 30)},
        {
            "phone": q("What is the phone number?", "Wie lautet die Telefonnummer?",
                       "Qual è il numero di telefono?", "电话号码是多少？"),
            "time": q("After what time should you call?", "Ab wie viel Uhr sollte man anrufen?",
                      "Dopo che ora conviene chiamare?", "几点以后打电话比较好？"),
        },
    ),
    Template(
        "exam",
        (
            "The exam lasts {minutes} minutes and has {questions} questions; you need {points} points to pass.",
            "You need {points} points to pass the exam, which has {questions} questions and lasts {minutes} minutes.",
        ),
        {"minutes": num(45, 180, 15), "questions": num(10, 40), "points": num(41, 75)},
        {
            "minutes": q("How many minutes does the exam last?", "Wie viele Minuten dauert die Prüfung?",
                         "Quanti minuti dura l'esame?", "考试持续多少分钟？"),
            "questions": q("How many questions does the exam have?", "Wie viele Fragen hat die Prüfung?",
                           "Quante domande ha l'esame?", "考试有多少道题？"),
            "points": q("How many points do you need to pass?", "Wie viele Punkte braucht man zum Bestehen?",
                        "Quanti punti servono per superare l'esame?", "需要多少分才能及格？"),
        },
    ),
    Template(
        "company",
        (
            "The company was founded in {year} and today employs {staff} people in {countries} countries.",
            "Founded in {year}, the firm now has {staff} employees in {countries} countries.",
        ),
        {"year": num(1890, 2015), "staff": num(40, 9500), "countries": num(2, 45)},
        {
            "year": q("In which year was the company founded?", "In welchem Jahr wurde das Unternehmen gegründet?",
                      "In che anno è stata fondata l'azienda?", "这家公司是哪一年成立的？"),
            "staff": q("How many people does the company employ?", "Wie viele Menschen beschäftigt das Unternehmen?",
                       "Quante persone impiega l'azienda?", "这家公司有多少名员工？"),
            "countries": q("In how many countries does the company have employees?",
                           "In wie vielen Ländern hat das Unternehmen Beschäftigte?",
                           "In quanti paesi ha dipendenti l'azienda?", "这家公司在多少个国家有员工？"),
        },
    ),
    Template(
        "ferry",
        (
            "The ferry to the island takes {minutes} minutes; adults pay {price} euros and children {child} euros.",
            "A ticket for the {minutes}-minute ferry crossing costs {price} euros, or {child} euros for children.",
        ),
        {"minutes": num(20, 150, 5), "price": num(6, 40), "child": below("price", 2, 2)},
        {
            "minutes": q("How many minutes does the ferry take?", "Wie viele Minuten braucht die Fähre?",
                         "Quanti minuti impiega il traghetto?", "坐渡轮要多少分钟？"),
            "price": q("How many euros does an adult ticket cost?",
                       "Wie viele Euro kostet eine Fahrkarte für Erwachsene?",
                       "Quanti euro costa un biglietto per adulti?", "成人票多少欧元？"),
            "child": q("How many euros do children pay?", "Wie viele Euro zahlen Kinder?",
                       "Quanti euro pagano i bambini?", "儿童票多少欧元？"),
        },
    ),
    Template(
        "drive",
        (
            "{city} is {km} kilometres away, and by car the trip takes about {hours} hours.",
            "It is {km} kilometres to {city}, a drive of about {hours} hours.",
        ),
        {"city": pick(CITIES), "km": num(180, 990, 10), "hours": lambda rng, v: str(round(int(v["km"]) / 85))},
        {
            "km": q("How many kilometres away is the city?", "Wie viele Kilometer ist die Stadt entfernt?",
                    "A quanti chilometri si trova la città?", "这座城市有多少公里远？"),
            "hours": q("About how many hours does the trip take by car?",
                       "Wie viele Stunden dauert die Fahrt mit dem Auto ungefähr?",
                       "Quante ore dura circa il viaggio in auto?", "开车大约需要几个小时？"),
        },
    ),
    Template(
        "zoo",
        (
            "The zoo is home to {species} species, and its elephant house opened in {year}. Admission costs"
            " {price} euros.",
            "Admission to the zoo costs {price} euros. It keeps {species} species, and the elephant house opened"
            " in {year}.",
        ),
        {"species": num(60, 850), "year": num(1905, 2020), "price": num(8, 35)},
        {
            "species": q("How many species live in the zoo?", "Wie viele Arten leben im Zoo?",
                         "Quante specie vivono nello zoo?", "动物园里有多少个物种？"),
            "year": q("In which year did the elephant house open?", "In welchem Jahr wurde das Elefantenhaus eröffnet?",
                      "In che anno è stata aperta la casa degli elefanti?", "大象馆是哪一年开放的？"),
            "price": q("How many euros does admission cost?", "Wie viele Euro kostet der Eintritt?",
                       "Quanti euro costa l'ingresso?", "门票多少欧元？"),
        },
    ),
    Template(
        "birthday",
        (
            "{name} turned {age} on Saturday, and {guests} guests came to her party.",
            "On Saturday {name} celebrated her {age_ord} birthday with {guests} guests.",
        ),
        {"name": pick(WOMEN), "age": num(6, 95), "age_ord": ordinal_of("age"), "guests": num(4, 60)},
        {
            "age": q("How old did she turn?", "Wie alt ist sie geworden?", "Quanti anni ha compiuto?",
                     "她满多少岁了？"),
            "guests": q("How many guests came to the party?", "Wie viele Gäste kamen zur Feier?",
                        "Quanti ospiti sono venuti alla festa?", "有多少位客人来参加了聚会？"),
        },
    ),
    Template(
        "shop",
        (
            "The shop is open from {open} to {close}, and this week everything is {discount} percent off.",
            "This week everything in the shop is {discount} percent off; it opens at {open} and closes at {close}.",
        ),
        {"open": clock(7, 10, 30), "close": clock(18, 21, 30), "discount": num(10, 70, 5)},
        {
            "open": q("At what time does the shop open?", "Um wie viel Uhr öffnet das Geschäft?",
                      "A che ora apre il negozio?", "商店几点开门？"),
            "close": q("At what time does the shop close?", "Um wie viel Uhr schließt das Geschäft?",
                       "A che ora chiude il negozio?", "商店几点关门？"),
            "discount": q("By how many percent are prices reduced?", "Um wie viel Prozent sind die Preise reduziert?",
                          "Di quanto per cento sono scontati i prezzi?", "价格降低了百分之多少？"),
        },
    ),
)


def _fill(template: Template, rng: random.Random) -> Values | None:
    values: Values = {}
    for name, make in template.slots.items():
        made = make(rng, values)
        if isinstance(made, str):
            values[name] = made
        else:
            values.update(made)
    answers = [values[k] for k in template.questions]
    # Distinct answers, none standing alone inside another ("5" in "5:30", not "4" in "412"): each
    # question then points at one number in the passage.
    for i, a in enumerate(answers):
        alone = re.compile(rf"(?<![\d:]){re.escape(a)}(?![\d:])")
        if any(alone.search(b) for j, b in enumerate(answers) if i != j):
            return None
    return values


def numeric_passage(template: Template, rng: random.Random) -> tuple[str, tuple[QA, ...]]:
    """One passage from `template` and a question in every language for each of its facts."""
    for _ in range(100):
        values = _fill(template, rng)
        if values is not None:
            break
    else:
        raise RuntimeError(f"template {template.name!r}: no distinct answers in 100 draws")
    text = rng.choice(template.passages).format(**values)
    qa = tuple(
        QA(lang, question.format(**values), values[slot])
        for slot, by_lang in template.questions.items()
        for lang, question in by_lang.items()
    )
    return text, qa


def numeric_passages(count: int, rng: random.Random) -> list[tuple[str, tuple[QA, ...]]]:
    """`count` passages, the templates taken in turn (each as often as the others)."""
    order = list(TEMPLATES)
    out = []
    for i in range(count):
        if i % len(order) == 0:
            rng.shuffle(order)
        out.append(numeric_passage(order[i % len(order)], rng))
    return out
