"""Parallel sentences from the LibreOffice help pages (en -> de/it/zh), aligned by paragraph id.

Debian's `libreoffice-help-*` packages ship the help as generated HTML, one page per source
`.xhp` file, in which every translatable paragraph or heading keeps the id of its source
paragraph (`par_id...`, `hd_id...`) in every language. A pair is (same page, same id).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path

TARGET_LANGS = ("de", "it", "zh")
PRODUCT = "LibreOffice"

_ID = re.compile(r"^(par|hd)_id\w*$")
_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
# Paragraph classes holding code, formulas or pictures, not prose.
_SKIP_CLASSES = {"code", "codeintable", "smathcode", "image", "imageintable", "example", "youtube_consent"}
# Placeholders the help system would fill in with the product name.
_PRODUCT_PLACEHOLDERS = ("$[officename]", "%PRODUCTNAME")


class _PageParser(HTMLParser):
    """Collects the text of id-carrying paragraphs and headings of one help page.

    Inline markup (spans, links, emphasis) keeps its text; of a `switchinline` group only the
    default variant is kept (the hidden macOS/Windows variants are dropped), so "Ctrl" is not
    doubled into "Command Ctrl".
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []
        self._tag: str | None = None  # the block being captured
        self._id = ""
        self._parts: list[str] = []
        self._skip_depth = 0  # > 0 while inside a hidden, non-default span

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in _BLOCKS:
            self._finish()  # a block never nests in another: an unclosed one ends here
            pid = a.get("id") or ""
            classes = set((a.get("class") or "").split())
            if _ID.match(pid) and not classes & _SKIP_CLASSES:
                self._tag, self._id, self._parts, self._skip_depth = tag, pid, [], 0
            return
        if self._tag is None:
            return
        if tag == "span":
            if self._skip_depth:
                self._skip_depth += 1
            elif "hidden" in a and not (a.get("id") or "").startswith("default"):
                self._skip_depth = 1
        elif tag == "br" and not self._skip_depth:
            self._parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if self._tag is None:
            return
        if tag == "span" and self._skip_depth:
            self._skip_depth -= 1
        elif tag == self._tag:
            self._finish()

    def handle_data(self, data: str) -> None:
        if self._tag is not None and not self._skip_depth:
            self._parts.append(data)

    def _finish(self) -> None:
        if self._tag is not None:
            self.paragraphs.append((self._id, "".join(self._parts)))
        self._tag = None


def normalise_space(text: str) -> str:
    return " ".join(text.split())


def page_paragraphs(html: str) -> dict[str, str]:
    """id -> text of the paragraphs and headings of one help page, whitespace normalised.

    An id that occurs twice with different texts is ambiguous and left out.
    """
    start = html.find('id="DisplayArea"')
    end = html.find("<footer", start if start >= 0 else 0)
    body = html[start if start >= 0 else 0 : end if end >= 0 else len(html)]
    parser = _PageParser()
    parser.feed(body)
    parser.close()
    parser._finish()
    out: dict[str, str] = {}
    ambiguous: set[str] = set()
    for pid, raw in parser.paragraphs:
        text = normalise_space(raw)
        for placeholder in _PRODUCT_PLACEHOLDERS:
            text = text.replace(placeholder, PRODUCT)
        if pid in out and out[pid] != text:
            ambiguous.add(pid)
        out.setdefault(pid, text)
    for pid in ambiguous:
        del out[pid]
    return out


# --- filters ------------------------------------------------------------------------------

_URL = re.compile(r"https?:|www\.|\.(html?|org|com|net|xml|odt|ods|odp|xhp)\b", re.IGNORECASE)
_MARKUP = re.compile(r"[<>{}\[\]\\|_=#@$%^~*/`]|\(\)|\.\w|\w\(")  # tags, code, paths, calls, dotted names
_CAMEL = re.compile(r"[a-z][A-Z]")
_CAMEL_OK = {"LibreOffice", "OpenOffice", "PowerPoint", "JavaScript", "PostScript", "MathML", "OpenDocument",
             "OpenType", "TrueType", "FontWork", "PowerShell", "MySQL", "PostgreSQL", "FireBird", "iPhone"}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

MIN_WORDS, MAX_WORDS = 3, 30  # 30 words is about 12 s of speech, well under Whisper's 30 s window


def english_reject(text: str) -> str | None:
    """Why an English help paragraph is not a speakable sentence, or None when it is."""
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return f"{len(words)} words"
    if _URL.search(text):
        return "url or file name"
    if _MARKUP.search(text):
        return "markup, code or path"
    if any(_CAMEL.search(w) and w.strip(".,;:!?()\"'") not in _CAMEL_OK for w in words):
        return "identifier"
    letters = sum(c.isalpha() for c in text)
    if letters < 0.7 * len(text.replace(" ", "")):
        return "dominated by symbols or digits"
    if not (text[0].isalnum() or text[0] in "\"(") or text.startswith("' "):  # "' " opens a Basic comment
        return "starts with a symbol"
    return None


# Length ratio in characters, target / English, after removing the words both sides share
# (product, key and function names: they would pull the ratio towards 1 in zh). Measured on
# the aligned pairs that pass the English filter and are translated (LibreOffice 7.4 help,
# Debian bookworm): median de 1.21, it 1.21, zh 0.32; the 1st-99th percentiles of
# ln(ratio / median) are about +-0.7 for English under 30 characters, +-0.6 under 60, +-0.45
# under 120 and +-0.35 above (short headings vary most: "To Edit a Frame" -> "So bearbeiten
# Sie einen Rahmen:" is 2.1). Stale translations sit far out at every length ("Exits current
# mode." -> four sentences, 9.8), so a pair is kept when
# |ln(ratio / median)| <= 0.15 + 2.5 / sqrt(English characters), which follows those percentiles.
RATIO_MEDIANS: Mapping[str, float] = {"de": 1.21, "it": 1.21, "zh": 0.32}


def _token(word: str) -> str:
    return word.casefold().strip(".,;:!?()\"'「」")


def length_ratio(english: str, target: str) -> float:
    shared = {_token(w) for w in english.split()} & {_token(w) for w in target.split()}
    en = sum(len(w) + 1 for w in english.split() if _token(w) not in shared)
    tgt = sum(len(w) + 1 for w in target.split() if _token(w) not in shared)
    return max(tgt, 1) / max(en, 1)


def ratio_ok(english: str, target: str, lang: str) -> bool:
    deviation = abs(math.log(length_ratio(english, target) / RATIO_MEDIANS[lang]))
    return deviation <= 0.15 + 2.5 / math.sqrt(len(english))


def target_reject(english: str, target: str, lang: str) -> str | None:
    """Why `target` is not a usable translation of `english` into `lang`, or None."""
    if lang not in RATIO_MEDIANS:
        raise ValueError(f"unknown target language {lang!r} (known: {', '.join(RATIO_MEDIANS)})")
    if not target.strip():
        return "empty"
    if normalise_space(target).casefold() == normalise_space(english).casefold():
        return "untranslated"
    if re.search(r"[<>{}\\]|\$\[|%[A-Z]{2,}", target):
        return "markup or placeholder"
    if lang == "zh":
        # Names, menus and keys stay in Latin script in Chinese ("LibreOffice Basic", "Ctrl"), but
        # lowercase English words are prose left untranslated.
        cjk = len(_CJK.findall(target))
        prose = [w for w in re.findall(r"[A-Za-z]+", target) if w.islower() and len(w) > 1]
        if cjk == 0 or (len(prose) >= 2 and sum(map(len, prose)) > 0.5 * cjk):
            return "mostly not Chinese"
    else:
        # Left in English: most of the target's words are the source's words.
        src = {_token(w) for w in english.split()}
        tgt = [_token(w) for w in target.split()]
        if sum(w in src for w in tgt) > 0.6 * len(tgt):
            return "mostly English words"
    if not ratio_ok(english, target, lang):
        return f"length ratio {length_ratio(english, target):.2f} far from {RATIO_MEDIANS[lang]}"
    return None


# --- the corpus ---------------------------------------------------------------------------


def help_pages(root: Path) -> list[str]:
    """Page paths relative to a language's help root (the folder holding `text/`), sorted."""
    text = root / "text"
    if not text.is_dir():
        raise FileNotFoundError(f"{root}: no text/ folder: not a LibreOffice help root")
    return sorted(p.relative_to(root).as_posix() for p in text.rglob("*.html"))


def _read(path: Path) -> dict[str, str]:
    try:
        html = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return page_paragraphs(html)


def aligned_pairs(roots: Mapping[str, Path], pages: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """(English, {lang: translation}) for the given pages, filtered, in page and id order.

    `roots` maps "en" and each target language to its help root. Only English paragraphs that
    pass `english_reject` are kept, with the translations that pass `target_reject`; English
    paragraphs without any usable translation are dropped. Duplicates are not removed here.
    """
    if "en" not in roots:
        raise ValueError("aligned_pairs needs the English help root ('en')")
    langs = [lang for lang in TARGET_LANGS if lang in roots]
    out: list[tuple[str, dict[str, str]]] = []
    for page in pages:
        english = _read(roots["en"] / page)
        if not english:
            continue
        targets = {lang: _read(roots[lang] / page) for lang in langs}
        for pid, en in english.items():
            if english_reject(en):
                continue
            translations = {}
            for lang in langs:
                tgt = targets[lang].get(pid)
                if tgt is not None and not target_reject(en, tgt, lang):
                    translations[lang] = tgt
            if translations:
                out.append((en, translations))
    return out
