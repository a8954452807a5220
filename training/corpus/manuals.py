"""Parallel sentences (en -> de/it/zh) from translated Debian documentation packages.

Families (`FAMILIES`), each a set of Debian packages with one manual in several languages:

- libreoffice: the LibreOffice help, aligned by paragraph id (`helpdocs`).
- debian-reference: the Debian Reference, one HTML page per chapter (`ch02.de.html`).
- gimp-help: the GIMP help, one HTML page per section (same file name in every language).

The last two are DocBook XSL output of one source translated through PO files (po4a, xml2po),
so every language has the same element structure; untranslated paragraphs stay in English.
Their ids are no help: the named ones (`_package_configuration`, `gimp-tool-crop`) mark
sections, not paragraphs, and the generated ones (`idm2039`) differ between languages. A page
is therefore cut into segments, at each named id and each heading, and a segment is aligned
paragraph by paragraph, by position, only when its sequence of block elements (with their
enclosing elements) is the same in both languages. A translation that adds, drops or
restructures a paragraph makes its segment differ, and the segment gives no pairs rather than
shifted ones.

Pairs pass `helpdocs.english_reject` and `helpdocs.target_reject` (3-30 speakable English
words; a translation that is not English, has no markup, and a plausible length). Paragraphs
of more than 30 words are split into sentences, used only where both sides split into the
same number of sentences that agree in length and in the names and numbers they hold.
An English text found twice is kept once (`merge_duplicates`).

    python -m tympan.training.corpus.manuals --family gimp-help --out gimp.jsonl [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tympan.atomic import write_file
from tympan.config import tympan_home
from tympan.training.corpus import helpdocs, sources
from tympan.training.corpus.helpdocs import english_reject, target_reject
from tympan.training.corpus.sources import SourceError

TARGET_LANGS = helpdocs.TARGET_LANGS
# The length-ratio check of `helpdocs.target_reject` is used as it is. Medians of
# `helpdocs.length_ratio` over the aligned pairs that pass the English filter and are translated,
# before the ratio check: Debian Reference 2.100 de 1.23, it 1.23, zh 0.33; GIMP help 2.10.34
# de 1.18, it 1.19, zh 0.32 - within 3 % of the LibreOffice medians it is tuned on (1.21, 1.21,
# 0.32). Most of the GIMP help in zh_CN is still English, so that family gives few zh pairs.
Pair = tuple[str, dict[str, str]]
Aligner = Callable[[Mapping[str, Path]], list[Pair]]

# --- one page: segments of blocks ---------------------------------------------------------------

# Elements whose own text is one item (a paragraph, heading, list or table cell).
_TEXT_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "td", "th", "caption", "blockquote"}
# Structure around them: part of a block's signature, no text of their own.
_CONTAINERS = {"html", "body", "div", "table", "thead", "tbody", "tfoot", "tr", "ul", "ol", "dl", "pre",
               "section", "colgroup", "head", "title", "script", "style"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_VOID = {"br", "img", "hr", "col", "meta", "link", "input", "area", "wbr", "base"}
# Not prose: navigation, tables of contents, code, the page's <head>.
_SKIP_TAGS = {"pre", "head", "script", "style"}
# The index is sorted per language, so its entries do not correspond by position.
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples",
                 "programlisting", "screen", "synopsis", "literallayout", "index"}
# Footnote marks ("[1]") inside a sentence.
_SKIP_INLINE_CLASSES = {"footnote", "para"}
# Ids DocBook XSL numbers itself; they differ between languages, so they cannot anchor a segment.
_GENERATED_ID = re.compile(r"^(ftn\.)?id[a-z]?\d+$")

_CJK_CHAR = r"\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
# DocBook labels of titles: "2.1.3. ", "Chapter 2. ", "Tabelle 2.1. ", "表 2.1. ", "Part II. ", "第 2 章 ".
_TITLE_LABEL = re.compile(r"^(?:[^\W\d_]+\s+)?(?:\d+|[A-Z]|[IVXL]+)(?:\.\d+)*\.\s+|^第\s*\d+\s*[章节部]\s*")


@dataclass
class _Open:
    tag: str
    skip: bool  # nothing inside is text
    block: int | None = None  # for a text block: its index in the parser's blocks


@dataclass
class Block:
    segment: str  # the named id and the count of headings since: "_package_configuration#0"
    signature: str  # the block and its enclosing elements: "div.section/div.note/table/tr/td/p"
    text: str
    title: bool = False  # a heading or a table/figure title, which carries a DocBook label
    picture: bool = False  # has an inline picture ("click on  to ..."): its text is not a whole sentence


class _DocParser(HTMLParser):
    """The text blocks of a DocBook XSL page, each with its segment and its signature."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._parts: list[list[str]] = []  # the raw text of each block
        self._stack: list[_Open] = []
        self._path: list[str] = []  # "tag" or "div.class" of each open element
        self._anchor = ""
        self._headings = 0
        self._skip_inline: list[str] = []  # open inline elements whose text is dropped

    def _skipping(self) -> bool:
        return bool(self._skip_inline) or any(o.skip for o in self._stack)

    def _current(self) -> int | None:
        for o in reversed(self._stack):
            if o.block is not None:
                return o.block
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        ident = a.get("id") or ""
        if ident and not _GENERATED_ID.match(ident) and not self._skipping():
            self._anchor, self._headings = ident, 0
            # An anchor opening a block (<dt><a id="glossary-alpha"/>Alpha</dt>) names that block's
            # segment too: glossary entries are sorted per language, so only their ids align them.
            current = self._current()
            if current is not None and not "".join(self._parts[current]).strip():
                self.blocks[current].segment = f"{ident}#0"
        if tag in _VOID:
            current = self._current()
            if current is not None and not self._skipping():
                if tag == "br":
                    self._parts[current].append(" ")
                elif tag == "img":
                    self.blocks[current].picture = True
            return
        if tag not in _TEXT_BLOCKS and tag not in _CONTAINERS:  # inline: its text joins the block's
            if self._skip_inline or (tag in {"sup", "a"} and classes & _SKIP_INLINE_CLASSES):
                self._skip_inline.append(tag)
            return
        opened = _Open(tag, tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES))
        self._path.append(f"div.{a.get('class') or ''}" if tag == "div" else tag)
        if tag in _TEXT_BLOCKS and not opened.skip and not self._skipping():
            if tag in _HEADINGS:
                self._headings += 1
            opened.block = len(self.blocks)
            title = tag in _HEADINGS or "title" in classes
            self.blocks.append(Block(f"{self._anchor}#{self._headings}", "/".join(self._path), "", title))
            self._parts.append([])
        self._stack.append(opened)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # XHTML's <a id="x"/>: an element with no content.
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skip_inline:
            if tag == self._skip_inline[-1]:
                self._skip_inline.pop()
            return
        if tag not in _TEXT_BLOCKS and tag not in _CONTAINERS:
            return
        # Close up to the matching element (closing what was left open); a stray end tag is ignored.
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                del self._path[depth:]
                return

    def handle_data(self, data: str) -> None:
        current = self._current()
        if current is not None and not self._skipping():
            self._parts[current].append(data)

    def result(self) -> list[Block]:
        for block, parts in zip(self.blocks, self._parts, strict=True):
            block.text = "".join(parts)
        return self.blocks


def clean_text(raw: str, *, title: bool = False) -> str:
    """A block's text as it is said: spacing normalised, no DocBook label on titles."""
    text = helpdocs.normalise_space(raw)
    # Chinese sources are wrapped at line ends; the break is no space between characters.
    text = re.sub(rf"(?<=[{_CJK_CHAR}]) (?=[{_CJK_CHAR}])", "", text)
    # Menu paths as the LibreOffice help writes them ("Tools - Transform Tools - Crop").
    text = text.replace("→", "-")
    if title:
        text = _TITLE_LABEL.sub("", text, count=1)
    return text


def page_blocks(html: str) -> list[Block]:
    """The text blocks of one DocBook HTML page in document order, empty ones left out."""
    parser = _DocParser()
    parser.feed(html)
    parser.close()
    out = []
    for block in parser.result():
        block.text = clean_text(block.text, title=block.title)
        if block.text:
            out.append(block)
    return out


def segments(blocks: Iterable[Block]) -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for block in blocks:
        out.setdefault(block.segment, []).append(block)
    return out


def aligned_blocks(english: Sequence[Block], target: Sequence[Block]) -> list[tuple[str, str]]:
    """(English, target) texts of the segments whose block structure is the same on both sides.

    Blocks with an inline picture are left out: without it their text has a hole.
    """
    tgt = segments(target)
    out: list[tuple[str, str]] = []
    for name, en_blocks in segments(english).items():
        other = tgt.get(name)
        if other is None or [b.signature for b in other] != [b.signature for b in en_blocks]:
            continue
        out.extend((e.text, t.text) for e, t in zip(en_blocks, other, strict=True) if not (e.picture or t.picture))
    return out


# --- sentences ---------------------------------------------------------------------------------

# Words ending in a full stop that do not end a sentence (en, de, it).
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "fig", "no", "approx", "z.b", "d.h", "bzw", "ca", "ggf", "usw",
                  "vgl", "nr", "bsp", "evtl", "inkl", "ecc", "es", "p.es", "pag", "ad", "dr", "mr", "mrs", "st"}
_LATIN_END = re.compile(r"(?<=[.!?])([\"')»”]*)\s+(?=[\"'(«“]?[A-ZÀ-ÖØ-Þ0-9])")
_CJK_END = re.compile(r"(?<=[。！？])[”」』）)]*")


def split_sentences(text: str, lang: str) -> list[str]:
    """The sentences of a paragraph; a cut is made only where a sentence clearly ends."""
    if lang == "zh":
        cuts = [m.end() for m in _CJK_END.finditer(text)]
    else:
        cuts = []
        for m in _LATIN_END.finditer(text):
            word = text[: m.start()].rsplit(None, 1)[-1].rstrip("\"')»”")
            stem = word.rstrip(".!?").lstrip("(\"'«“").casefold()
            # "e.g.", "z. B.", initials ("J. Smith") and numbers ("2. Mai") do not end sentences.
            if word.endswith(".") and (stem in _ABBREVIATIONS or len(stem) <= 1 or stem.isdigit()):
                continue
            cuts.append(m.end(1))  # after the closing quotes and brackets
    # Not inside parentheses: "(See below. It is short.)" stays one piece, as it would read.
    cuts = [c for c in cuts if len(re.findall(r"[(（]", text[:c])) <= len(re.findall(r"[)）]", text[:c]))]
    pieces, start = [], 0
    for cut in [*cuts, len(text)]:
        piece = text[start:cut].strip()
        if piece:
            pieces.append(piece)
        start = cut
    return pieces


def _sentence_pairs(english: str, target: str, lang: str) -> list[tuple[str, str]]:
    """A long paragraph pair as sentence pairs, or none where the split is not trustworthy.

    A translator may join two sentences and split another, or tell the same thing in other
    sentences (the German GIMP help often does), so the same number of sentences is not enough:
    every pair must also have a plausible length, and the names and numbers both paragraphs
    share ("GIMP", "RGB", "16") must sit in the same sentences on both sides.
    """
    en_sentences = split_sentences(english, "en")
    tgt_sentences = split_sentences(target, lang)
    if len(en_sentences) < 2 or len(en_sentences) != len(tgt_sentences):
        return []
    pairs = list(zip(en_sentences, tgt_sentences, strict=True))
    if not all(helpdocs.ratio_ok(e, t, lang) for e, t in pairs):
        return []
    en_marks = [_marks(s) for s in en_sentences]
    tgt_marks = [_marks(s) for s in tgt_sentences]
    for mark in set().union(*en_marks) & set().union(*tgt_marks):
        if [mark in m for m in en_marks] != [mark in m for m in tgt_marks]:
            return []
    return pairs


def _marks(sentence: str) -> set[str]:
    """Latin-script words with a capital or a digit: names and numbers, kept in translation."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9+'-]*", sentence)
    return {w for w in words if len(w) > 1 and not w.islower()} | set(re.findall(r"\d+", sentence))


# --- the families -------------------------------------------------------------------------------


def dedup_key(text: str) -> str:
    """The form English texts are compared in: case, accents, punctuation and spacing ignored.

    The same comparison as `text.normalise`, kept here because text.py is where this module
    is meant to be used from (importing it back would be circular).
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def merge_duplicates(pairs: Iterable[Pair]) -> list[Pair]:
    """One pair per English text, in first-seen order; a later copy adds the languages missing."""
    merged: dict[str, Pair] = {}
    for en, translations in pairs:
        key = dedup_key(en)
        if key in merged:
            for lang, tgt in translations.items():
                merged[key][1].setdefault(lang, tgt)
        else:
            merged[key] = (en, dict(translations))
    return list(merged.values())


def align_pages(roots: Mapping[str, Path], pages: Mapping[str, Mapping[str, str]]) -> list[Pair]:
    """Filtered, deduplicated pairs of DocBook HTML pages, in page and paragraph order.

    `pages` maps a page name to {lang: its file name under that language's root}, which must
    include the English file ("en"). A page missing in a language gives no pairs in that language.
    """
    _need_english(roots)
    langs = [lang for lang in TARGET_LANGS if lang in roots]
    out: list[Pair] = []
    for files in pages.values():
        english = page_blocks((roots["en"] / files["en"]).read_text(encoding="utf-8"))
        found: dict[str, dict[str, str]] = {}  # lang -> {English: translation} on this page
        for lang in langs:
            path = roots[lang] / files[lang] if lang in files else None
            if path is None or not path.is_file():
                continue
            found[lang] = {}
            for en, tgt in aligned_blocks(english, page_blocks(path.read_text(encoding="utf-8"))):
                items = [(en, tgt)] if len(en.split()) <= helpdocs.MAX_WORDS else _sentence_pairs(en, tgt, lang)
                for e, t in items:
                    if english_reject(e) is None and target_reject(e, t, lang) is None:
                        found[lang].setdefault(e, t)
        for block in english:
            long = len(block.text.split()) > helpdocs.MAX_WORDS
            for en in split_sentences(block.text, "en") if long else [block.text]:
                translations = {lang: found[lang][en] for lang in found if en in found[lang]}
                if translations:
                    out.append((en, translations))
    return merge_duplicates(out)


def _need_english(roots: Mapping[str, Path]) -> None:
    if "en" not in roots:
        raise ValueError("aligning manuals needs the English root ('en')")


# Each package holds one language, named in its page files: "ch02.zh-cn.html".
DEBIAN_REFERENCE_SUFFIX = {"en": "en", "de": "de", "it": "it", "zh": "zh-cn"}


def debian_reference_pairs(roots: Mapping[str, Path]) -> list[Pair]:
    """Pairs of the Debian Reference; `roots` maps each language to its usr/share/debian-reference."""
    _need_english(roots)
    suffix = DEBIAN_REFERENCE_SUFFIX
    pages: dict[str, dict[str, str]] = {}
    for path in sorted(roots["en"].glob(f"*.{suffix['en']}.html")):
        stem = path.name[: -len(f".{suffix['en']}.html")]
        pages[stem] = {lang: f"{stem}.{suffix[lang]}.html" for lang in roots}
    return align_pages(roots, pages)


def gimp_help_pairs(roots: Mapping[str, Path]) -> list[Pair]:
    """Pairs of the GIMP help; `roots` maps each language to its help folder (.../help/de)."""
    _need_english(roots)
    pages = {p.name: {lang: p.name for lang in roots} for p in sorted(roots["en"].glob("*.html"))}
    return align_pages(roots, pages)


def libreoffice_pairs(roots: Mapping[str, Path]) -> list[Pair]:
    """Pairs of the LibreOffice help (aligned by paragraph id in `helpdocs`), deduplicated."""
    return merge_duplicates(helpdocs.aligned_pairs(roots, helpdocs.help_pages(roots["en"])))


@dataclass(frozen=True)
class Family:
    packages: Mapping[str, str]  # lang -> Debian package
    aligner: Aligner


FAMILIES: dict[str, Family] = {
    "libreoffice": Family({lang: pkg for lang, (pkg, _) in sources.LIBREOFFICE_HELP.items()}, libreoffice_pairs),
    "debian-reference": Family(
        {lang: pkg for lang, (pkg, _) in sources.MANUALS["debian-reference"].items()}, debian_reference_pairs
    ),
    "gimp-help": Family({lang: pkg for lang, (pkg, _) in sources.MANUALS["gimp-help"].items()}, gimp_help_pairs),
}


def family_pairs(root: Path, family: str) -> list[Pair]:
    """All pairs of one family, its packages fetched and unpacked under `root` first if needed."""
    if family not in FAMILIES:
        raise SourceError(f"no manuals family {family!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[family].aligner(sources.manual_roots(root, family))


# --- output -------------------------------------------------------------------------------------


def pair_id(family: str, english: str) -> str:
    return f"{family}-{hashlib.sha1(dedup_key(english).encode('utf-8')).hexdigest()[:12]}"


def write_jsonl(path: Path, family: str, pairs: Iterable[Pair]) -> int:
    """Write pairs as JSON lines, complete or not at all; returns how many."""
    lines = []
    for en, translations in pairs:
        record = {"family": family, "id": pair_id(family, en), "en": en}
        record.update((lang, translations[lang]) for lang in TARGET_LANGS if lang in translations)
        lines.append(json.dumps(record, ensure_ascii=False))
    write_file(path, "".join(line + "\n" for line in lines))
    return len(lines)


def sample(pairs: Sequence[Pair], limit: int | None, seed: int) -> list[Pair]:
    """`limit` pairs drawn with `seed`, kept in their original order; all of them without a limit."""
    if limit is None or limit >= len(pairs):
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tympan.training.corpus.manuals",
        description="Write the aligned en -> de/it/zh pairs of a family of manuals as JSON lines.",
    )
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    p.add_argument("--limit", type=int, help="write only this many pairs, drawn at random")
    p.add_argument("--seed", type=int, default=0, help="the seed of that draw")
    p.add_argument("--root", type=Path, help="where packages are fetched and unpacked (default $TYMPAN_HOME/sources)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    started = time.monotonic()
    try:
        pairs = family_pairs(args.root or tympan_home() / "sources", args.family)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = sample(pairs, args.limit, args.seed)
    n = write_jsonl(args.out, args.family, chosen)
    counts = {lang: sum(lang in t for _, t in chosen) for lang in TARGET_LANGS}
    print(json.dumps({"family": args.family, "out": str(args.out), "pairs": n, "by_lang": counts,
                      "of": len(pairs), "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
