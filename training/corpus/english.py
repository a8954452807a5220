"""Everyday English for ASR beyond the help pages: fortunes, numbers, questions, short commands.

Fortunes come from Debian's `fortunes` (the short, plain ones). Numbers, questions and
commands are written here: sentences with cardinals, years, times, prices, digit strings and
ordinals; many questions; and commands of one to three words ("stop", "next slide"), which
real users say and a model must transcribe without inventing words around them. Targets are
the written form ("42", "7:30", "$12.50"): the speech side speaks them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from tympan.training.corpus.numeric_qa import CITIES, MONTHS, NAMES, SURNAMES, ordinal

# --- fortunes ----------------------------------------------------------------------------

# Files of pictures, not sayings. Debian ships offensive fortunes apart, in `off/`
# (package fortunes-off): only the top folder is read, so they never enter.
FORTUNE_SKIP = {"art", "ascii-art"}
_ATTRIBUTION = re.compile(r"^\s*(--|\(By |-\s?[A-Z])")
_INLINE_ATTRIBUTION = re.compile(r"\s+--?\s?[A-Z][\w.' ]+$")
_FORTUNE_JUNK = re.compile(r"[<>{}\[\]\\|_=#@$%^~*/`\x08]|--|:-|;-\)|\b[QA]:|https?:|\w\.[a-z]{2,3}\b")


def fortune_text(entry: str, min_words: int = 3, max_words: int = 25) -> str | None:
    """A fortune as one plain sentence or two, or None when it is art, dialogue, verse or long."""
    lines = [line.rstrip() for line in entry.strip("\n").splitlines() if line.strip()]
    while lines and _ATTRIBUTION.match(lines[-1]):
        lines.pop()
    if not lines or len(lines) > 3:
        return None
    if any("\t" in line or line.startswith("   ") for line in lines):
        return None  # indented: verse, dialogue or a picture
    text = " ".join(" ".join(lines).split())
    text = _INLINE_ATTRIBUTION.sub("", text) if re.search(r"[.!?\"]\s+--?\s?[A-Z]", text) else text
    if len(text) > 2 and text[0] == '"' and text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1]
    if not min_words <= len(text.split()) <= max_words or _FORTUNE_JUNK.search(text):
        return None
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 0.75 * len(text.replace(" ", "")) or sum(c.isupper() for c in letters) > 0.4 * len(letters):
        return None
    if not (text[0].isupper() or text[0].isdigit() or text[0] in "\"'("):
        return None  # a lowercase start is a dictionary entry ("interlard - vt., ...") or a fragment
    return text


def fortunes(fortunes_dir: Path) -> list[str]:
    """The short plain fortunes of every cookie file, files in name order."""
    out = []
    for path in sorted(fortunes_dir.iterdir()):
        if not path.is_file() or "." in path.name or path.name in FORTUNE_SKIP:
            continue
        for entry in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE):
            text = fortune_text(entry)
            if text is not None:
                out.append(text)
    return out


# --- sentences with numbers ------------------------------------------------------------------

Maker = Callable[[random.Random], str]


def _time(rng: random.Random) -> str:
    style = rng.randrange(3)
    h, m = rng.randint(0, 23), rng.randrange(0, 60, rng.choice((1, 5, 15)))
    if style == 0:
        return f"{h}:{m:02d}"
    suffix = "a.m." if h < 12 else "p.m."
    h12 = h % 12 or 12
    return f"{h12}:{m:02d} {suffix}" if m or style == 1 else f"{h12} {suffix}"


def _price(rng: random.Random) -> str:
    whole, cents = rng.choice((rng.randint(1, 20), rng.randint(20, 400), rng.randint(400, 9000))), rng.randrange(100)
    style = rng.randrange(4)
    if style == 0:
        return f"${whole}.{cents:02d}"
    if style == 1:
        return f"£{whole}.{cents:02d}"
    if style == 2:
        return f"{whole} euros"
    return f"${whole:,}"


def _phone(rng: random.Random) -> str:
    return rng.choice((
        f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        f"0{rng.randint(10, 99)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
        " ".join(str(rng.randrange(10)) for _ in range(rng.randint(4, 7))),
    ))


def _big(rng: random.Random) -> str:
    return f"{rng.choice((rng.randint(1000, 99999), rng.randint(100000, 9999999))):,}"


def _n(lo: int, hi: int) -> Maker:
    return lambda rng: str(rng.randint(lo, hi))


def _year(rng: random.Random) -> str:
    return str(rng.choice((rng.randint(1900, 2030), rng.randint(1066, 1899), rng.randint(1990, 2030))))


def _date(rng: random.Random) -> str:
    month, day = rng.choice(MONTHS), rng.randint(1, 28)
    return rng.choice((f"{month} {day}", f"{month} {ordinal(day)}", f"the {ordinal(day)} of {month}"))


_SLOTS: dict[str, Maker] = {
    "time": _time, "price": _price, "phone": _phone, "big": _big, "year": _year, "date": _date,
    "n": _n(2, 99), "small": _n(2, 12), "pct": _n(1, 99), "page": _n(2, 480), "room": _n(101, 950),
    "ord": lambda rng: ordinal(rng.randint(1, 40)), "pin": lambda rng: f"{rng.randint(0, 9999):04d}",
    "order": _n(100000, 999999), "dec": lambda rng: f"{rng.randint(0, 99)}.{rng.randint(1, 9)}",
    "name": lambda rng: rng.choice(NAMES), "surname": lambda rng: rng.choice(SURNAMES),
    "city": lambda rng: rng.choice(CITIES), "month": lambda rng: rng.choice(MONTHS),
    "minus": _n(1, 30), "score": _n(0, 9), "version": lambda rng: f"{rng.randint(1, 12)}.{rng.randint(0, 9)}",
}

NUMBER_TEMPLATES: tuple[str, ...] = (
    "The meeting has been moved to {time}.",
    "I was born on {date}, {year}.",
    "It costs {price}.",
    "Please call me back on {phone}.",
    "She finished {ord} out of {n} runners.",
    "The city has a population of about {big}.",
    "Turn to page {page}, please.",
    "We need {small} chairs and {n} glasses for the party.",
    "Add {n} grams of flour and {small} eggs.",
    "The temperature dropped to minus {minus} degrees last night.",
    "My PIN is {pin}.",
    "Set an alarm for {time}.",
    "Remind me at {time} tomorrow.",
    "Today is {date}.",
    "Room {room}, please.",
    "That will be {price}, please.",
    "The proposal got {pct} percent of the votes.",
    "He scored {n} points in {small} games.",
    "The train to {city} leaves at {time} from platform {small}.",
    "Your order number is {order}.",
    "I'd like {small} tickets for the {time} show.",
    "Take me to the {ord} floor.",
    "In {year}, the company had {big} employees.",
    "Between {year} and {year2}, prices rose by {pct} percent.",
    "Bus {n} arrives in {small} minutes.",
    "The answer is {n}.",
    "It weighs {dec} kilograms.",
    "Version {version} was released on {date}.",
    "The score was {score} to {score2} at half time.",
    "We drove {n} miles in {small} hours.",
    "The flight to {city} lands at {time}.",
    "{name} turned {n} on {date}.",
    "The rent went up by {price} a month.",
    "There are {big} books in the library.",
    "Dial {phone} for the front desk.",
    "Our appointment with Doctor {surname} is at {time} on {date}.",
    "The museum opened in {year}.",
    "Chapter {small} starts on page {page}.",
    "It's {dec} degrees outside.",
    "The {ord} day of the trip was the best.",
    "Multiply {n} by {small}.",
    "We sold {big} copies in {month}.",
    "The code for the gate is {pin}.",
    "I paid {price} for these shoes.",
    "The {year} season was the best in years.",
)


def number_sentence(template: str, rng: random.Random) -> str:
    def fill(m: re.Match[str]) -> str:
        return _SLOTS[m[1].rstrip("2")](rng)

    return re.sub(r"\.\.$", ".", re.sub(r"\{(\w+)\}", fill, template))  # "p.m.." at the end


def number_sentences(count: int, rng: random.Random) -> list[str]:
    return [number_sentence(NUMBER_TEMPLATES[i % len(NUMBER_TEMPLATES)], rng) for i in range(count)]


# --- questions ---------------------------------------------------------------------------

QUESTIONS: tuple[str, ...] = (
    "What time is it?", "Where is the nearest pharmacy?", "Can you help me?", "How much does this cost?",
    "Is this seat taken?", "What did you say?", "Could you repeat that, please?", "Where are you from?",
    "How are you today?", "What's your name?", "Do you speak English?", "Where is the bathroom?",
    "When does the store open?", "Why is the sky blue?", "How do I get to the station?",
    "What's the weather like tomorrow?", "Is it going to rain today?", "Have you seen my keys?",
    "Can I pay by card?", "Which way is north?", "Who is speaking, please?", "Are we there yet?",
    "What are you doing this weekend?", "Did you finish the report?", "How long will it take?",
    "Could you turn the music down?", "What's on the agenda for today?", "Shall we start the meeting?",
    "Is anyone sitting here?", "Can you send me the file?", "Where did I put my glasses?",
    "What do you recommend?", "How far is the airport?", "Would you like some coffee?",
    "Do you have this in a larger size?", "What does this word mean?", "Can you hear me now?",
    "Is the printer working again?", "Who wrote this book?", "When was this building built?",
    "How many people are coming?", "Why did the light turn off?", "What is the password for the wifi?",
    "Which platform does the train leave from?", "Are you sure about that?", "Could you spell that for me?",
    "What's the difference between the two?", "Is there a bank near here?", "How do you pronounce this?",
    "Can we meet tomorrow instead?", "What happened to the lights?", "Is breakfast included?",
    "Where can I buy a ticket?", "How old is your daughter?", "What's the capital of Australia?",
    "Did anyone call while I was out?", "Do I need an umbrella?", "How do I reset my password?",
)

_QUESTION_TEMPLATES: tuple[str, ...] = (
    "What's the weather like in {city} {when}?",
    "How far is it from here to {city}?",
    "Can you book a table for {small} at {time}?",
    "Is there a train to {city} after {time}?",
    "Did {name} call you {when}?",
    "Where does {name} live now?",
    "How much is a ticket to {city}?",
    "Could you wake me up at {time}?",
    "Have you ever been to {city}?",
    "What time does the flight from {city} arrive?",
    "Is {name} coming to the meeting {when}?",
    "How many people live in {city}?",
    "Can you remind me to call {name} at {time}?",
    "When is {name}'s birthday?",
    "What did {name} say about the plan?",
)
_WHEN = ("today", "tomorrow", "this weekend", "on Monday", "next week", "tonight", "this morning")


def questions(count: int, rng: random.Random, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The fixed questions, `extra` ones (from facts), then templated ones up to `count` in all."""
    out = list(QUESTIONS) + list(extra)
    slots = {**_SLOTS, "when": lambda r: r.choice(_WHEN)}
    i = 0
    while len(out) < count:
        template = _QUESTION_TEMPLATES[i % len(_QUESTION_TEMPLATES)]
        out.append(re.sub(r"\{(\w+)\}", lambda m: slots[m[1]](rng), template))
        i += 1
    return out[:count] if count < len(out) else out


# --- short commands ----------------------------------------------------------------------

COMMANDS: tuple[str, ...] = (
    "Stop.", "Go.", "Next.", "Back.", "Pause.", "Play.", "Yes.", "No.", "Okay.", "Cancel.", "Help.", "Repeat.",
    "Louder.", "Quieter.", "Faster.", "Slower.", "Continue.", "Start.", "Done.", "Wait.", "Skip.", "Undo.",
    "Redo.", "Save.", "Delete.", "Open.", "Close.", "Mute.", "Unmute.", "Sure.", "Thanks.", "Thank you.",
    "Hello.", "Goodbye.", "Good morning.", "Good night.", "Of course.", "Not now.", "Maybe later.",
    "Next slide.", "Previous slide.", "First slide.", "Last slide.", "Go back.", "Go forward.",
    "Turn left.", "Turn right.", "Go straight.", "Turn around.", "Volume up.", "Volume down.",
    "Lights on.", "Lights off.", "Turn it off.", "Turn it on.", "Call home.", "Call mom.", "Call the office.",
    "Read it again.", "Say that again.", "Scroll down.", "Scroll up.", "Zoom in.", "Zoom out.",
    "Zoom out more.", "Page down.", "Page up.", "Select all.", "Copy that.", "Paste it.", "Send it.",
    "Send message.", "New message.", "Reply.", "Reply all.", "Forward it.", "Start recording.",
    "Stop recording.", "Take a picture.", "Open the door.", "Lock the door.", "Play music.",
    "Next song.", "Previous song.", "Shuffle.", "Stop the music.", "Set a timer.", "Cancel the timer.",
    "What's next?", "Why?", "Really?", "Where?", "When?", "Who?", "How much?", "Ready?", "Any questions?",
    "Check the weather.", "Show the map.", "Find a restaurant.", "Navigate home.", "Call an ambulance.",
    "Emergency.", "Abort.", "Confirm.", "I agree.", "I disagree.", "Not sure.", "Exactly.", "Absolutely.",
    "All right.", "Never mind.", "Hold on.", "Come in.", "Sit down.", "Stand up.", "Listen.", "Look.",
    "Slow down.", "Hurry up.", "Keep going.", "Well done.", "Try again.", "Excuse me.", "Sorry.",
    "Switch camera.", "Share screen.", "Raise hand.", "Leave meeting.", "Join meeting.", "Mute everyone.",
    "Open settings.", "Brightness up.", "Brightness down.", "Channel up.", "Channel down.", "Fan on.",
    "Heating off.", "Warmer, please.", "Cooler, please.", "Rewind.", "Fast forward.", "Full screen.",
    "Exit full screen.", "Print it.", "Sign out.", "Log in.", "Refresh.", "Go home.", "Main menu.",
)


def commands(rng: random.Random) -> list[str]:
    """The fixed commands, then numbers said alone: digits, teens, tens, a few years and codes."""
    numbers = [str(n) for n in range(0, 21)] + [str(n) for n in range(30, 101, 10)]
    numbers += [str(rng.randint(21, 99)) for _ in range(15)] + [str(rng.randint(1950, 2030)) for _ in range(6)]
    numbers += [f"{rng.randint(100, 999)}" for _ in range(6)]
    return list(COMMANDS) + numbers
