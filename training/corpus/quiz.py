"""Facts from the bsdgames quiz files, told as sentences, with questions about them (English).

Format (quiz(6)): a data line holds one fact as categories separated by `:`; a category is a
pattern where `a|b` are alternatives, `{x}` is optional and `[x]` groups (`V[ell|iej]a`); `\\`
quotes the next character and ends a line that continues on the next. The `index` file names
each data file and its categories. A fact's "main form" takes the first alternative and keeps
every optional part: `{G{eorge} }Washington` -> "George Washington".
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tympan.errors import TympanError
from tympan.training.corpus.items import QA
from tympan.training.corpus.wordnet import indefinite_article

# --- the pattern language ------------------------------------------------------------------

# A pattern parses to alternatives (a list of sequences); a sequence holds literal strings and
# ("opt" | "grp", alternatives) nodes.
Node = str | tuple[str, list]


class QuizFormatError(TympanError, ValueError):
    """A quiz pattern or file does not follow the quiz(6) syntax."""


def parse_pattern(pattern: str) -> list[list[Node]]:
    alts, i = _parse_alts(pattern, 0, None)
    if i != len(pattern):
        raise QuizFormatError(f"unbalanced {pattern[i]!r} at {i} in {pattern!r}")
    return alts


def _parse_alts(s: str, i: int, closer: str | None) -> tuple[list[list[Node]], int]:
    alts: list[list[Node]] = [[]]
    literal: list[str] = []

    def flush() -> None:
        if literal:
            alts[-1].append("".join(literal))
            literal.clear()

    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            literal.append(s[i + 1])
            i += 2
            continue
        if c in "{[":
            flush()
            inner, i = _parse_alts(s, i + 1, "}" if c == "{" else "]")
            alts[-1].append(("opt" if c == "{" else "grp", inner))
            continue
        if c in "}]":
            if c != closer:
                raise QuizFormatError(f"unexpected {c!r} at {i} in {s!r}")
            flush()
            return alts, i + 1
        if c == "|":
            flush()
            alts.append([])
        else:
            literal.append(c)
        i += 1
    if closer is not None:
        raise QuizFormatError(f"missing {closer!r} in {s!r}")
    flush()
    return alts, i


def _main(alts: list[list[Node]]) -> str:
    return "".join(node if isinstance(node, str) else _main(node[1]) for node in alts[0])


def main_form(pattern: str) -> str:
    """The first alternative with every optional part kept, whitespace normalised."""
    return " ".join(_main(parse_pattern(pattern)).split())


def _expand_seq(seq: list[Node]) -> list[str]:
    out = [""]
    for node in seq:
        if isinstance(node, str):
            options = [node]
        elif node[0] == "opt":
            options = ["", *_expand(node[1])]
        else:
            options = _expand(node[1])
        out = [a + b for a in out for b in options]
    return out


def _expand(alts: list[list[Node]]) -> list[str]:
    return [s for seq in alts for s in _expand_seq(seq)]


def alternatives(pattern: str) -> list[str]:
    """Every answer the pattern accepts, whitespace normalised, first seen first."""
    seen: dict[str, None] = {}
    for s in _expand(parse_pattern(pattern)):
        seen.setdefault(" ".join(s.split()), None)
    return list(seen)


def split_categories(line: str) -> list[str]:
    """Categories of one logical line: split at `:` that is not quoted by a backslash."""
    parts, current, i = [], [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            current.append(line[i : i + 2])
            i += 2
            continue
        if line[i] == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(line[i])
        i += 1
    parts.append("".join(current))
    return parts


def parse_quiz(text: str) -> list[list[str]]:
    """The facts of one data file: each a list of category patterns (unexpanded)."""
    facts, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        if line.strip():
            facts.append(split_categories(line))
    if pending.strip():
        facts.append(split_categories(pending))
    return facts


def read_index(quiz_dir: Path) -> dict[str, list[str]]:
    """Subject file name -> its category patterns, from the quiz `index`."""
    index = quiz_dir / "index"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: quiz index not found")
    out = {}
    for fields in parse_quiz(index.read_text(encoding="utf-8")):
        out[Path(fields[0]).name] = fields[1:]
    return out


# --- facts as sentences ------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    sentence: str
    qa: tuple[QA, ...]


_an = indefinite_article


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _title(s: str) -> str:
    return " ".join(w if any(c.isupper() for c in w) else _cap(w) for w in s.split())


def _en(question: str, answer: str) -> QA:
    return QA("en", question, answer)


_THE_NAMES = {"Netherlands", "Bahamas", "Gambia", "Philippines", "Maldives", "Seychelles", "Comoros", "Vatican",
              "Ivory Coast", "Congo", "DR Congo", "Sudan", "Yukon", "Northwest Territories", "Shire"}


def _the(name: str) -> str:
    """The name as it follows "of": "the Netherlands", "the Republic of Korea", "France"."""
    plural = re.search(r"\b(Islands|Republic|States|Emirates|Territories)$", name)
    if name in _THE_NAMES or plural or re.match(r"(Republic|Kingdom|United|Federated|Democratic|Central) ", name):
        return f"the {name}"
    return name


def _capital(c: list[str]) -> Fact:
    country, capital = _the(c[0]), c[1]
    return Fact(f"The capital of {country} is {capital}.", (_en(f"What is the capital of {country}?", capital),))


def _midearth(c: list[str]) -> Fact:
    land, capital = c[0], c[1]
    return Fact(f"In Middle-earth, the chief city of {land} is {capital}.",
                (_en(f"What is the chief city of {land}?", capital),))


def _state(c: list[str]) -> Fact:
    state, capital, flower = c[0], c[1], c[3]
    if flower.lower() in {"", "gok"}:  # "gok": God only knows
        return Fact(f"The capital of {state} is {capital}.", (_en(f"What is the capital of {state}?", capital),))
    return Fact(
        f"The capital of {state} is {capital}, and its state flower is the {flower}.",
        (_en(f"What is the capital of {state}?", capital), _en(f"What is the state flower of {state}?", flower)),
    )


def _element(c: list[str]) -> Fact:
    symbol, number, name = c[0], c[1], c[3]
    return Fact(
        f"{name} has the chemical symbol {symbol} and the atomic number {number}.",
        (_en(f"What is the atomic number of {name.lower()}?", number),
         _en(f"What is the chemical symbol of {name.lower()}?", symbol)),
    )


def _baby(c: list[str]) -> Fact:
    baby, adult = c[0], c[1]
    return Fact(f"A young {adult} is called {_an(baby)} {baby}.", (_en(f"What is a young {adult} called?", baby),))


def _collective(c: list[str]) -> Fact:
    things, group = c[0], c[1]
    return Fact(f"A group of {things} is called {_an(group)} {group}.",
                (_en(f"What is a group of {things} called?", group),))


def _female(c: list[str]) -> Fact | None:
    male, female = c[0], c[1]
    if len(male) < 3:
        return None
    return Fact(f"The female counterpart of {_an(male)} {male} is {_an(female)} {female}.",
                (_en(f"What is the female counterpart of {_an(male)} {male}?", female),))


def _president(c: list[str]) -> Fact | None:
    name, term, vice, successor = c[:4]
    years = re.findall(r"\d{4}", term)
    if not years:
        return None
    start = years[0]
    qa = [_en(f"In which year did {name} become president?", start)]
    if len(years) > 1:
        said = f"{name} was president from {start} to {years[1]}"
    else:
        said = f"{name} became president in {start}"
    if vice and not vice.lower().startswith("none"):
        said += f", with {vice} as vice president"
        qa.append(_en(f"Who was vice president under {name}?", vice))
    if successor:
        said += f", and was succeeded by {successor}"
        qa.append(_en(f"Who succeeded {name} as president?", successor))
    return Fact(said + ".", tuple(qa))


def _sovereign(c: list[str]) -> Fact | None:
    name, century, successor = c[0], c[1], c[2]
    if not century.isdigit() or not successor:
        return None
    n = int(century)
    nth = f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
    return Fact(f"{name} ruled England in the {nth} century and was succeeded by {successor}.",
                (_en(f"Who succeeded {name}?", successor),))


def _inca(c: list[str]) -> Fact:
    ruler, successor = _title(c[0]), _title(c[1])
    return Fact(f"The Inca ruler {ruler} was succeeded by {successor}.",
                (_en(f"Who succeeded the Inca ruler {ruler}?", successor),))


def _zodiac(c: list[str]) -> Fact:
    year, following = c[0], c[1]
    return Fact(f"In the Chinese zodiac, the year of the {year} is followed by the year of the {following}.",
                (_en(f"In the Chinese zodiac, which animal's year follows the year of the {year}?", following),))


def _opposite(c: list[str]) -> Fact:
    a, b = c[0], c[1]
    return Fact(f"The opposite of {a} is {b}.", (_en(f"What is the opposite of {a}?", b),))


def _latin(c: list[str]) -> Fact:
    word, meaning = c[0], c[1]
    return Fact(f"The Latin word {word} means \u201c{meaning}\u201d.",
                (_en(f"What does the Latin word {word} mean?", meaning),))


_PROPER = {"African", "American", "Chinese", "Indian", "Japanese", "French", "English", "I"}


def _lower_first(s: str) -> str:
    return s if s.split()[0] in _PROPER else s[:1].lower() + s[1:]


def _flower(c: list[str]) -> Fact | None:
    flower = re.sub(r"^([^,]+), (\w+)$", r"\2 \1", _lower_first(c[0]))  # "tulip, red" -> "red tulip"
    if "/" in flower:
        return None
    meaning = _lower_first(c[1])
    return Fact(f"In the language of flowers, the {flower} stands for \u201c{meaning}\u201d.",
                (_en(f"In the language of flowers, what does the {flower} stand for?", meaning),))


def _area(c: list[str]) -> Fact | None:
    code, region, city = c[0], _title(c[1]), _title(c[2])
    if not code.isdigit() or not region:
        return None
    said = f"The telephone area code {code} covers {region}"
    said += f", including the city of {city}." if city else "."
    return Fact(said, (_en(f"Which region does the area code {code} cover?", region),))


def _times(c: list[str]) -> Fact | None:
    m = re.fullmatch(r"(\d+) x (\d+)", c[0])
    if not m or min(int(m[1]), int(m[2])) < 2:
        return None
    a, b, product = m[1], m[2], c[1]
    return Fact(f"{a} times {b} is {product}.", (_en(f"What is {a} times {b}?", product),))


def _poem(c: list[str]) -> Fact:
    line, following, poem, author = c[:4]
    return Fact(
        f"The line \u201c{line.rstrip(',;:')}\u201d is followed by \u201c{following.rstrip(',;:')}\u201d, in"
        f" {poem} by {author}.",
        (_en(f"Who wrote {poem}?", author),),
    )


def _bard(c: list[str]) -> Fact:
    line, _following, play, character = c[:4]
    play = re.sub(r"\s+[IVX]+-[ivx]+$", "", play)  # act and scene
    line = line.rstrip(",;:")
    end = "" if line.endswith(("?", "!")) else "."
    asked = line.rstrip("?!.")
    return Fact(f"In Shakespeare's {play}, {character} says \u201c{line}\u201d{end}",
                (_en(f"In {play}, which character says \u201c{asked}\u201d?", character),))


# Subject file -> how one of its facts becomes a sentence (None: skip the fact). Subjects not
# listed are not speech (ed commands, morse, the Uniform Criminal Code, sequences, Greek) or are
# jokes rather than facts (murders: "the CIA").
# The data writes accents as marks before or after a letter ("Mal'e", "\u00b0Aland"): such facts
# would be spoken wrongly, so they are left out.
_ACCENT_MARK = re.compile(r"[a-z]'[aeiou]|\u00b0", re.IGNORECASE)

# Each maker gets the main forms of a fact's categories; the number says how many leading
# categories must be non-empty for the fact to be told.
SUBJECTS: dict[str, tuple[Callable[[list[str]], Fact | None], int]] = {
    "africa": (_capital, 2), "america": (_capital, 2), "asia": (_capital, 2), "europe": (_capital, 2),
    "province": (_capital, 2), "midearth": (_midearth, 2), "state": (_state, 3), "elements": (_element, 4),
    "babies": (_baby, 2), "collectives": (_collective, 2), "sexes": (_female, 2), "pres": (_president, 2),
    "sov": (_sovereign, 3), "inca": (_inca, 2), "chinese": (_zodiac, 2),
    "posneg": (_opposite, 2), "latin": (_latin, 2), "flowers": (_flower, 2), "areas": (_area, 2),
    "mult": (_times, 2), "poetry": (_poem, 4), "bard": (_bard, 4),
}


def quiz_facts(quiz_dir: Path) -> dict[str, list[Fact]]:
    """Subject -> its facts as sentences, for the subjects the index lists and SUBJECTS covers."""
    index = read_index(quiz_dir)
    out: dict[str, list[Fact]] = {}
    for subject in sorted(index):
        path = quiz_dir / subject
        if subject not in SUBJECTS or not path.is_file():
            continue
        make, required = SUBJECTS[subject]
        n_categories = len(index[subject])
        facts = []
        for categories in parse_quiz(path.read_text(encoding="utf-8", errors="replace")):
            forms = [main_form(c) for c in categories]
            if len(forms) < n_categories or not all(forms[:required]):
                continue
            if any(_ACCENT_MARK.search(f) for f in forms):
                continue
            fact = make(forms)
            if fact is not None:
                facts.append(fact)
        out[subject] = facts
    return out


MAX_PASSAGE_WORDS = 60  # about 25 s of speech: the passage must fit the encoder's 30 s window


def quiz_passages(
    facts: dict[str, Sequence[Fact]], rng: random.Random, rounds: int
) -> list[tuple[str, tuple[QA, ...]]]:
    """Passages of two or three facts of one subject, with every fact's questions.

    Each round shuffles every subject's facts and groups them anew, so a fact appears once per
    round, beside different neighbours.
    """
    out = []
    for _ in range(rounds):
        for subject in sorted(facts):
            pool = list(facts[subject])
            rng.shuffle(pool)
            i = 0
            while i + 1 < len(pool):
                take = pool[i : i + rng.choice((2, 3))]
                while len(take) > 1 and sum(len(f.sentence.split()) for f in take) > MAX_PASSAGE_WORDS:
                    take = take[:-1]
                i += len(take)
                if len(take) < 2 and len(take[0].sentence.split()) > MAX_PASSAGE_WORDS:
                    continue
                out.append((" ".join(f.sentence for f in take), tuple(q for f in take for q in f.qa)))
    return out
