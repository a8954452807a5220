"""English sentences and facts from WordNet (Debian `wordnet-base`, the `data.*` files).

A data line is `offset lexfile pos word_count (word lex_id)... pointer_count (symbol offset pos
source/target)... | gloss` (wndb(5WN)); counts of words are hexadecimal. The gloss holds a
definition and, in double quotes, example sentences. Used here:
- the example sentences (plain English for ASR);
- instance nouns of people and places (`@i` pointers; lexicographer files noun.person = 18 and
  noun.location = 15): "Paris is the capital and largest city of France."; for people with
  their years in the gloss, questions about those years in all four languages;
- plants and animals with a member-holonym genus (`#m` to "genus_X"): "To which genus ...?".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tympan.training.corpus.items import QA

NOUN_LOCATION, NOUN_PERSON, NOUN_ANIMAL, NOUN_PLANT = 15, 18, 5, 20
DATA_FILES = ("data.adj", "data.adv", "data.noun", "data.verb")


@dataclass(frozen=True)
class Synset:
    offset: str
    lexfile: int
    words: tuple[str, ...]  # lemmas with spaces for underscores, adjective markers removed
    pointers: tuple[tuple[str, str], ...]  # (symbol, target offset) for noun targets
    gloss: str


def parse_line(line: str) -> Synset | None:
    """One data line; None for the licence header (lines starting with spaces)."""
    if line.startswith(" ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    f = head.split()
    n_words = int(f[3], 16)
    words = tuple(re.sub(r"\(\w+\)$", "", f[4 + 2 * i]).replace("_", " ") for i in range(n_words))
    at = 4 + 2 * n_words
    n_pointers = int(f[at])
    pointers = tuple(
        (f[at + 1 + 4 * i], f[at + 2 + 4 * i]) for i in range(n_pointers) if f[at + 3 + 4 * i] == "n"
    )
    return Synset(f[0], int(f[1]), words, pointers, gloss.strip())


def read_synsets(path: Path, keep: str | None = None) -> Iterator[Synset]:
    """The synsets of one data file; with `keep`, only lines containing that substring (fast)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if keep is not None and keep not in line:
                continue
            synset = parse_line(line)
            if synset is not None:
                yield synset


# --- example sentences ---------------------------------------------------------------------

_EXAMPLE = re.compile(r'"([^"]+)"')
_JUNK = re.compile(r"[<>{}\[\]\\|_=#@$%^~*/`]|--")


def as_sentence(text: str) -> str:
    text = " ".join(text.split()).strip()
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".?!" else text + "."


def examples(wordnet_dir: Path, min_words: int = 3, max_words: int = 30) -> list[str]:
    """The quoted example sentences of every gloss, as sentences, in file order."""
    out = []
    for name in DATA_FILES:
        for synset in read_synsets(wordnet_dir / name, keep='"'):
            for ex in _EXAMPLE.findall(synset.gloss):
                ex = ex.strip().rstrip(",;:")
                if not min_words <= len(ex.split()) <= max_words or _JUNK.search(ex) or not ex[:1].isalnum():
                    continue
                if sum(c.isalpha() for c in ex) < 0.75 * len(ex.replace(" ", "")):
                    continue
                out.append(as_sentence(ex))
    return out


# --- noun phrases as predicates --------------------------------------------------------------

_DETERMINERS = {"a", "an", "the", "one", "any", "either", "each", "some", "several", "various", "two", "three",
                "four", "five", "many", "all", "its", "his", "her", "their"}
_THE_WORDS = {"capital", "chief", "principal", "main", "largest", "highest", "longest", "oldest", "biggest",
              "smallest", "deepest", "first", "second", "third", "last", "leading", "former", "only"}
_VOWEL_SOUND = re.compile(r"[aio]|e(?!u|we)|u(?!ni|se|su|ro|ti|ku|ra|bi)|h(?:our|onest|eir)", re.IGNORECASE)


def indefinite_article(word: str) -> str:
    """ "a" or "an" by the sound the word starts with, as far as spelling tells."""
    return "an" if _VOWEL_SOUND.match(word) else "a"


def with_article(phrase: str) -> str:
    """A gloss' noun phrase as it follows "is": "physicist born ..." -> "a physicist born ..."."""
    first = phrase.split()[0]
    lower = first.lower()
    if lower in _DETERMINERS:
        return phrase
    if lower in _THE_WORDS or re.fullmatch(r"\d+(st|nd|rd|th)", lower):
        return f"the {phrase}"
    return f"{indefinite_article(first)} {phrase}"


_HEAD_END = {"of", "having", "that", "which", "with", "in", "from", "for", "to", "who", "found", "native", "used",
             "resembling", "growing", "especially", "on", "by", "and", "or", "usually", "often", "formerly"}


def plural_head(phrase: str) -> bool:
    """Whether a noun phrase names several things ("perennial herbs of Europe"): no "a" fits it."""
    words = phrase.replace(",", " ,").split()
    if not words or words[0].lower() in _DETERMINERS:
        return False
    head = words[0]
    for w in words[1:]:
        if w.lower() in _HEAD_END or w == ",":
            break
        head = w
    return head.endswith("s") and not head.endswith(("ss", "us", "is", "ous"))


def first_clause(gloss: str) -> str:
    """The definition before its first `;` (examples and further remarks follow it)."""
    return gloss.split(";", 1)[0].strip()


# --- people and places ---------------------------------------------------------------------

_LIFE = re.compile(r"\s*\((\d{3,4})-(\d{3,4})\)\s*$")
_BORN = re.compile(r"\s*\(born (\d{4})\)\s*$")


def _clean_phrase(clause: str, max_words: int) -> str | None:
    clause = _LIFE.sub("", _BORN.sub("", clause)).strip().rstrip(",")
    if not clause or clause.startswith("(") or _JUNK.search(clause) or '"' in clause:
        return None  # "(Greek mythology) ...": a domain label, and myths have no years
    if not 2 <= len(clause.split()) <= max_words or plural_head(clause) or clause.split()[0] in _HEAD_END:
        return None
    return clause


def person_passage(synset: Synset, max_words: int = 45) -> tuple[str, tuple[QA, ...]] | None:
    """A sentence about a person with their years in it, and questions about the years."""
    if synset.lexfile != NOUN_PERSON or not any(p == "@i" for p, _ in synset.pointers):
        return None
    name = max(synset.words, key=lambda w: (len(w.split()), len(w)))
    gloss = synset.gloss.split(";")
    years = [g for g in gloss if _LIFE.search(g) or _BORN.search(g)]
    phrase = _clean_phrase(gloss[0], max_words)
    if phrase is None or not years or _JUNK.search(name):
        return None
    life, born = _LIFE.search(years[-1]), _BORN.search(years[-1])
    if life:
        b, d = int(life[1]), int(life[2])
        if not 15 <= d - b <= 110:
            return None
        text = f"{name}, who lived from {b} to {d}, was {with_article(phrase)}."
        qa = (
            QA("en", f"In which year was {name} born?", str(b)),
            QA("en", f"In which year did {name} die?", str(d)),
            QA("de", f"In welchem Jahr wurde {name} geboren?", str(b)),
            QA("de", f"In welchem Jahr starb {name}?", str(d)),
            QA("it", f"In che anno nacque {name}?", str(b)),
            QA("it", f"In che anno morì {name}?", str(d)),
            # Names have no fixed Chinese form here: ask about "the person in the text".
            QA("zh", "文中提到的人是哪一年出生的？", str(b)),
            QA("zh", "文中提到的人是哪一年去世的？", str(d)),
        )
    else:
        assert born is not None
        b = int(born[1])
        text = f"{name}, born in {b}, is {with_article(phrase)}."
        qa = (
            QA("en", f"In which year was {name} born?", str(b)),
            QA("de", f"In welchem Jahr wurde {name} geboren?", str(b)),
            QA("it", f"In che anno nacque {name}?", str(b)),
            QA("zh", "文中提到的人是哪一年出生的？", str(b)),
        )
    return text, qa


_THE_PLACES = {"Empire", "Islands", "States", "Republic", "Kingdom", "Sea", "Ocean", "River", "Mountains",
               "Channel", "Desert", "Strait", "Union", "Alps", "Andes", "Netherlands", "Peninsula", "Canal"}


_THE_NAMES = {"Seychelles", "Netherlands", "Philippines", "Bahamas", "Maldives", "Gambia", "Comoros", "Hague",
              "Vatican", "Sudan", "Congo", "Bronx", "Hebrides", "Azores", "Crimea", "Punjab"}


def place_sentence(synset: Synset, max_words: int = 35) -> str | None:
    """ "Paris is the capital and largest city of France." for an instance of a place."""
    if synset.lexfile != NOUN_LOCATION or not any(p == "@i" for p, _ in synset.pointers):
        return None
    name = synset.words[0]
    phrase = _clean_phrase(first_clause(synset.gloss), max_words)
    if phrase is None or _JUNK.search(name) or not name[:1].isupper():
        return None
    verb = "is"
    if name.split()[-1] in _THE_PLACES or name in _THE_NAMES:
        name = f"The {name}"
        verb = "are" if name.split()[-1] in {"Islands", "Mountains", "Alps", "Andes"} else "is"
    return f"{name} {verb} {with_article(phrase)}."


def names(wordnet_dir: Path) -> tuple[list[tuple[str, tuple[QA, ...]]], list[str]]:
    """(people with their years and questions, sentences about places), in file order."""
    people, places = [], []
    for synset in read_synsets(wordnet_dir / "data.noun", keep="@i "):
        person = person_passage(synset)
        if person is not None:
            people.append(person)
            continue
        place = place_sentence(synset)
        if place is not None:
            places.append(place)
    return people, places


# --- genus of plants and animals ------------------------------------------------------------

_GENUS = re.compile(r"^genus ([A-Z][a-z]+)$")


def genus_passages(wordnet_dir: Path, max_words: int = 35) -> list[tuple[str, tuple[QA, ...]]]:
    """ "A tulip is any of numerous ... It belongs to the genus Tulipa." with "To which genus ...?"."""
    genus_of: dict[str, str] = {}
    candidates: list[Synset] = []
    for synset in read_synsets(wordnet_dir / "data.noun", keep="#m "):
        if synset.lexfile not in (NOUN_ANIMAL, NOUN_PLANT):
            continue
        for word in synset.words:
            m = _GENUS.match(word)
            if m:
                genus_of[synset.offset] = m[1]
        candidates.append(synset)
    out = []
    for synset in candidates:
        word = synset.words[0]
        if word.lower() != word or word.startswith("genus ") or _JUNK.search(word):
            continue  # common names only: "tulip", not "Tulipa" or "genus Tulipa"
        genera = [genus_of[t] for p, t in synset.pointers if p == "#m" and t in genus_of]
        phrase = _clean_phrase(first_clause(synset.gloss), max_words)
        if len(genera) != 1 or phrase is None:
            continue
        article = indefinite_article(word).capitalize()
        text = f"{article} {word} is {with_article(phrase)}. It belongs to the genus {genera[0]}."
        out.append((text, (QA("en", f"To which genus does the {word} belong?", genera[0]),)))
    return out
