"""The spoken form of an English text: numbers, times, ordinals and symbols written out as words.

The corpus gives this form to the synthesizers, so every voice says the same words, and the CTC
stage learns it as its target (lowercased, without punctuation: `ctc_target`), so the target is
exactly what was spoken. The written form ("at 7:30", "in 1924") stays the ASR answer: restoring
it is the LLM's job.

Readings chosen (American, no "and"): years 1100-2099 after a word that introduces a date
("in 1924" -> "in nineteen twenty-four"), other integers as cardinals ("7874" -> "seven thousand
eight hundred seventy-four"), numbers that start with 0 and the groups of phone numbers and door
codes digit by digit, "7:30" -> "seven thirty", "12:00" -> "twelve o'clock", "21:00" ->
"twenty-one hundred", "9:05" -> "nine oh five", "25th" -> "twenty-fifth", "1990s" ->
"nineteen nineties", "3.5" -> "three point five", "%" -> "percent", "$5" -> "five dollars".
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Words after which a four-digit number is read as a year.
YEAR_CUES = {"in", "from", "to", "until", "till", "since", "by", "of", "before", "after", "around", "circa", "c.",
             "year", "born", "died", "founded", "completed", "built", "between", "and", "the", "early", "late", "mid"}
# Words after which a number is read digit by digit.
DIGIT_CUES = {"code", "pin", "phone", "number", "on", "call", "dial", "extension"}
CURRENCY = {"$": "dollars", "€": "euros", "£": "pounds"}

_NUMBER = re.compile(
    r"(?P<cur>[$€£])?(?P<num>\d+(?:,\d{3})+|\d+)(?:(?P<time>:\d{2})|(?P<dec>\.\d+))?(?P<suf>st|nd|rd|th|s)?(?P<pct>%)?"
)


def _cardinal(n: int) -> str:
    return num2words(n).replace(",", "").replace(" and ", " ")


def _year(n: int) -> str:
    if 2000 <= n <= 2009:
        return _cardinal(n)
    return num2words(n, to="year").replace(" and ", " ").replace("oh-", "oh ")


def _digits(s: str) -> str:
    return " ".join(DIGITS[int(c)] for c in s)


def _time(hours: int, minutes: int) -> str:
    if minutes == 0:
        return f"{_cardinal(hours)} o'clock" if hours <= 12 else f"{_cardinal(hours)} hundred"
    if minutes < 10:
        return f"{_cardinal(hours)} oh {_cardinal(minutes)}"
    return f"{_cardinal(hours)} {_cardinal(minutes)}"


def _plural(words: str) -> str:
    last = words.split(" ")[-1].split("-")[-1]
    if last.endswith("y"):
        plural = last[:-1] + "ies"
    elif last.endswith(("x", "s")):
        plural = last + "es"
    else:
        plural = last + "s"
    return words[: len(words) - len(last)] + plural


def _previous_words(text: str, start: int, n: int) -> list[str]:
    return [w.lower().strip(",;:()\"'") for w in text[:start].split()[-n:]]


def _read(m: re.Match[str], text: str) -> str:
    num, cur, suffix = m["num"], m["cur"], m["suf"]
    recent = _previous_words(text, m.start(), 5)
    before = recent[-1] if recent else ""
    if m["time"]:
        hours, minutes = int(num), int(m["time"][1:])
        if hours <= 24 and minutes < 60:
            return _time(hours, minutes)
        return f"{_cardinal(hours)} {_cardinal(minutes)}"
    if m["dec"]:
        words = num2words(float(num.replace(",", "") + m["dec"])).replace(",", "").replace(" and ", " ")
    elif suffix in ("st", "nd", "rd", "th"):
        words = num2words(int(num.replace(",", "")), to="ordinal").replace(",", "").replace(" and ", " ")
        suffix = None
    elif (len(num) > 1 and num.startswith("0")) or (DIGIT_CUES & set(recent) and "," not in num and len(num) >= 3):
        words = _digits(num)
    else:
        value = int(num.replace(",", ""))
        is_year = len(num) == 4 and 1100 <= value <= 2099 and (before in YEAR_CUES or suffix == "s")
        words = _year(value) if is_year else _cardinal(value)
    if suffix == "s":
        words = _plural(words)
    if m["pct"]:
        words += " percent"
    if cur:
        words += f" {CURRENCY[cur]}"
    return words


def spoken_form(text: str) -> str:
    """`text` with its numbers and symbols as words, punctuation and case kept."""
    text = re.sub(r"(?<=\w)-(?=\d)|(?<=\d)-(?=[A-Za-z])", " ", text)  # "30-minute" -> "30 minute"
    text = re.sub(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Z]\b)", " ", text)  # "F9" -> "F 9", "3D" -> "3 D"
    # A phone number ("0163 494 631"): every group digit by digit.
    text = re.sub(r"\b0\d+(?: \d+)+", lambda m: " ".join(_digits(g) for g in m.group().split()), text)
    out = _NUMBER.sub(lambda m: _read(m, text), text)
    return out.replace("&", " and ").replace("+", " plus ").replace("=", " equals ").replace("  ", " ")


def ctc_target(text: str) -> str:
    """The CTC stage's target: the spoken form, lowercased, letters, apostrophes and spaces only."""
    words = unicodedata.normalize("NFKD", spoken_form(text)).encode("ascii", "ignore").decode("ascii").lower()
    words = re.sub(r"[^a-z' ]+", " ", words.replace("-", " "))
    words = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", words)  # quotes, not apostrophes
    return " ".join(words.split())
