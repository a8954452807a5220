"""The text side of the training corpus, on the real Debian data and on crafted inputs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tympan.training.corpus import english, helpdocs, numeric_qa, quiz, wordnet
from tympan.training.corpus.sources import SourceError, Sources, ensure_sources
from tympan.training.corpus.text import SOURCE_ORDER, TextItem, normalise, text_items


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="module")
def sources(source_root: Path) -> Sources:
    # The real packages: apt-get download from the Debian mirror, unpacked with dpkg-deb.
    return ensure_sources(source_root)


@pytest.fixture(scope="module")
def small(sources: Sources) -> list[TextItem]:
    return text_items(sources, seed=1, size="small")


# --- sources -------------------------------------------------------------------------------


def test_sources_are_fetched_once_and_found(sources: Sources, source_root: Path) -> None:
    assert sorted(sources.libreoffice) == ["de", "en", "it", "zh"]
    for root in sources.libreoffice.values():
        assert (root / "text").is_dir()
    debs = sorted((source_root / "debs").glob("*.deb"))
    assert len(debs) == 4
    stamps = {p: p.stat().st_mtime_ns for p in debs}
    again = ensure_sources(source_root)
    assert again == sources
    assert {p: p.stat().st_mtime_ns for p in sorted((source_root / "debs").glob("*.deb"))} == stamps
    assert not list((source_root / "libreoffice").glob(".*tmp*")), "a temporary extraction was left behind"


def test_missing_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="wordnet-base"):
        ensure_sources(tmp_path, libreoffice_langs=(), wordnet=tmp_path / "nowhere")
    with pytest.raises(SourceError, match="bsdgames"):
        ensure_sources(tmp_path, libreoffice_langs=(), quiz=tmp_path)
    with pytest.raises(SourceError, match="English"):
        ensure_sources(tmp_path, libreoffice_langs=("de",))
    from tympan.training.corpus.sources import _download

    with pytest.raises(SourceError, match="apt-get download tympan-no-such-package"):
        _download("tympan-no-such-package", tmp_path / "debs")
    assert not list((tmp_path / "debs").iterdir()), "a failed download left files behind"


# --- the corpus ------------------------------------------------------------------------------


def test_small_corpus_is_deterministic_and_seeded(sources: Sources, small: list[TextItem]) -> None:
    assert text_items(sources, seed=1, size="small") == small
    other = text_items(sources, seed=2, size="small")
    assert [i.id for i in other] != [i.id for i in small]
    assert {i.source for i in small} == set(SOURCE_ORDER)
    assert 200 <= len(small) <= 800
    with pytest.raises(ValueError, match="unknown corpus size"):
        text_items(sources, seed=1, size="medium")


def test_items_are_unique_and_well_formed(small: list[TextItem]) -> None:
    ids = [i.id for i in small]
    assert len(set(ids)) == len(ids)
    keys = [normalise(i.text) for i in small]
    assert len(set(keys)) == len(keys), "duplicate English text"
    for item in small:
        assert item.id.startswith(item.source + "-") and item.text.strip()
        assert set(item.translations) <= {"de", "it", "zh"}
        if item.translations:
            assert item.source == "libreoffice"
    # Items come grouped by source, in the documented order.
    order = [s for s in SOURCE_ORDER if any(i.source == s for i in small)]
    assert [i.source for i in small] == sorted((i.source for i in small), key=order.index)


def test_libreoffice_pairs(small: list[TextItem]) -> None:
    pairs = [i for i in small if i.source == "libreoffice"]
    assert len(pairs) >= 30
    langs = {lang for i in pairs for lang in i.translations}
    assert langs == {"de", "it", "zh"}
    for item in pairs:
        assert item.translations and not item.qa
        assert helpdocs.english_reject(item.text) is None
        assert "$[" not in item.text and "<" not in item.text
        for lang, target in item.translations.items():
            assert helpdocs.target_reject(item.text, target, lang) is None
            assert target != item.text


def test_sqa_items(small: list[TextItem]) -> None:
    by_source = {s: [i for i in small if i.source == s and i.qa] for s in ("quiz", "taxonomy", "names", "numeric-qa")}
    assert all(by_source.values()), {s: len(v) for s, v in by_source.items()}
    for item in by_source["numeric-qa"]:
        assert {q.lang for q in item.qa} == {"en", "de", "it", "zh"}
    for item in by_source["quiz"] + by_source["taxonomy"]:
        for qa in item.qa:
            assert qa.answer in item.text, (qa, item.text)


def test_numeric_answers_are_in_the_passage_in_every_language() -> None:
    passages = numeric_qa.numeric_passages(10 * len(numeric_qa.TEMPLATES), random.Random(5))
    assert len({text for text, _ in passages}) == len(passages)
    for text, qa in passages:
        facts: dict[str, set[str]] = {}
        for q in qa:
            assert re.search(rf"(?<![\d:]){re.escape(q.answer)}(?![\d:])", text), (q, text)
            assert re.search(r"\d", q.answer)
            assert "{" not in q.question and q.question.endswith(("?", "？"))
            facts.setdefault(q.answer, set()).add(q.lang)
        assert all(langs == {"en", "de", "it", "zh"} for langs in facts.values()), (text, facts)
    for template in numeric_qa.TEMPLATES:
        for passage in template.passages:
            fields = {re.sub("_ord$", "", f) for f in re.findall(r"\{(\w+)\}", passage)}  # "3rd" tells 3
            assert set(template.questions) <= fields, (template.name, passage)


# --- filters and parsers on crafted input ----------------------------------------------------

HELP_PAGE = """<html><body><header>LibreOffice 7.4 Help</header>
<div id="DisplayArea" itemprop="softwareHelp">
<h1 id="hd_id1" dir="auto">Row Height</h1>
<p id="par_id2" class="paragraph"><span class="avis">Sets the <emph>row</emph> height in
  <a href="x.html">$[officename] Calc</a>.</span></p>
<p id="par_id3" class="paragraph">Use the shortcut <span class="switchinline"><span hidden="true" id="MAC1"
 class="MAC"><span class="keycode">Command</span></span><span hidden="true" id="default1"><span class="keycode">Ctrl
</span></span></span><span class="keycode"> + F</span> to open the <span class="menuitem">Find</span> toolbar.</p>
<p id="par_id4" class="code">Dim a As Integer</p>
<p id="par_id5">one</p><p id="par_id5">two</p>
<p class="embedded">No id here.</p>
<p id="par_id6">Fish &amp; chips<br>for two.</p>
</div><footer><p id="par_id9">This page is: /text/scalc/01/05030000.xhp</p></footer></body></html>"""


def test_help_page_markup_is_stripped() -> None:
    got = helpdocs.page_paragraphs(HELP_PAGE)
    assert got == {
        "hd_id1": "Row Height",
        "par_id2": "Sets the row height in LibreOffice Calc.",
        "par_id3": "Use the shortcut Ctrl + F to open the Find toolbar.",
        "par_id6": "Fish & chips for two.",
    }


def test_aligned_pairs_from_crafted_pages(tmp_path: Path) -> None:
    pages = {
        "en": '<div id="DisplayArea"><p id="par_id1">Choose Format - Cells to open the dialog.</p>'
        '<p id="par_id2">Click the Borders tab.</p><p id="par_id3">Only in English here.</p></div>',
        "de": '<div id="DisplayArea"><p id="par_id1">Wählen Sie Format - Zellen, um den Dialog zu öffnen.</p>'
        '<p id="par_id2">Im Register Umrandung wählen Sie eine obere und untere Linie. Geben Sie beiden die Farbe'
        " Weiß, dann schließen Sie den Dialog mit OK.</p></div>",
        "zh": '<div id="DisplayArea"><p id="par_id1">Choose Format - Cells to open the dialog.</p></div>',
    }
    roots = {}
    for lang, html in pages.items():
        (tmp_path / lang / "text" / "shared").mkdir(parents=True)
        (tmp_path / lang / "text" / "shared" / "a.html").write_text(html, encoding="utf-8")
        roots[lang] = tmp_path / lang
    assert helpdocs.help_pages(roots["en"]) == ["text/shared/a.html"]
    # par_id2's German is stale (far longer), zh is untranslated, par_id3 has no translation.
    assert helpdocs.aligned_pairs(roots, ["text/shared/a.html"]) == [
        ("Choose Format - Cells to open the dialog.", {"de": "Wählen Sie Format - Zellen, um den Dialog zu öffnen."})
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Two words", "words"),
        (" ".join(["word"] * 31), "words"),
        ("See https://help.libreoffice.org for more.", "url"),
        ("Open the file settings.xml in an editor.", "url"),
        ("Enter =SUM(A1:A5) in the cell.", "markup"),
        ("Set the value in <emph>bold</emph> here.", "markup"),
        ("The path is /usr/lib/libreoffice/program here.", "markup"),
        ("Call ThisComponent.getSheets to get them.", "markup"),
        ("Use the getCellByName method of the sheet.", "identifier"),
        ("A1 B2 C3 D4 E5 F6 99 100", "symbols"),
        ("' Returns the String of the first cell.", "symbol"),
    ],
)
def test_english_filter_rejects_junk(text: str, reason: str) -> None:
    got = helpdocs.english_reject(text)
    assert got is not None and reason in got, got


def test_english_filter_keeps_sentences() -> None:
    for text in ("Choose Format - Cells.", "Opens LibreOffice Calc in a new window.", "Sets the row height."):
        assert helpdocs.english_reject(text) is None, text


def test_target_filter() -> None:
    en = "Sets the properties of a connector."
    assert helpdocs.target_reject(en, "Legt die Eigenschaften eines Verbinders fest.", "de") is None
    assert helpdocs.target_reject(en, "设置连接符的属性。", "zh") is None
    assert helpdocs.target_reject(en, en, "de") == "untranslated"
    assert helpdocs.target_reject(en, en, "zh") == "untranslated"
    assert "ratio" in helpdocs.target_reject(
        en, "Legt die Eigenschaften für einen Verbinder fest. Auf diesen Befehl können Sie nur über das"
        " Kontextmenü zugreifen, und nur dann, wenn ein Verbinder ausgewählt ist.", "de")
    assert "ratio" in helpdocs.target_reject(en, "Verbinder.", "it")
    assert helpdocs.target_reject(en, "Sets the properties 连接符.", "zh") == "mostly not Chinese"
    assert helpdocs.target_reject(en, "Sets the properties of a Verbinder.", "de") == "mostly English words"
    assert helpdocs.target_reject(en, "Legt $[officename] die <b>Eigenschaften</b> fest.", "de") is not None
    with pytest.raises(ValueError, match="unknown target language"):
        helpdocs.target_reject(en, "x", "fr")


QUIZ_DATA = r"""Fr{ance}|French Republic:Par[is|ee]{ (city)}
Andorra:Andorra la V[ell|iej]a
{G{eorge} }Washington:1789-{17}97:\
{J{ohn} }Adams
Time\: a test:yes
"""


def test_quiz_patterns_and_lines() -> None:
    facts = quiz.parse_quiz(QUIZ_DATA)
    assert facts == [
        ["Fr{ance}|French Republic", "Par[is|ee]{ (city)}"],
        ["Andorra", "Andorra la V[ell|iej]a"],
        ["{G{eorge} }Washington", "1789-{17}97", "{J{ohn} }Adams"],
        [r"Time\: a test", "yes"],
    ]
    assert quiz.main_form(facts[0][0]) == "France"
    assert quiz.alternatives(facts[0][0]) == ["Fr", "France", "French Republic"]
    assert quiz.main_form(facts[0][1]) == "Paris (city)"
    assert quiz.alternatives(facts[1][1]) == ["Andorra la Vella", "Andorra la Vieja"]
    assert quiz.main_form(facts[2][0]) == "George Washington"
    assert quiz.main_form(facts[2][1]) == "1789-1797"
    assert quiz.main_form(facts[3][0]) == "Time: a test"
    with pytest.raises(quiz.QuizFormatError):
        quiz.parse_pattern("{open")
    with pytest.raises(quiz.QuizFormatError):
        quiz.parse_pattern("close]")


def test_quiz_facts_from_a_crafted_quiz(tmp_path: Path) -> None:
    (tmp_path / "index").write_text(f"{tmp_path}/europe:Europe{{an}}:cap{{ital}}\n{tmp_path}/morse:clear:morse\n")
    (tmp_path / "europe").write_text("Netherlands|Holland:Amsterdam\nFrance:Par[is|ee]\nIceland:Reykjav'ik\n")
    (tmp_path / "morse").write_text("A:.-\n")
    facts = quiz.quiz_facts(tmp_path)
    assert list(facts) == ["europe"]  # morse is not speech; Reykjav'ik's accent mark cannot be spoken
    assert [f.sentence for f in facts["europe"]] == [
        "The capital of the Netherlands is Amsterdam.",
        "The capital of France is Paris.",
    ]
    assert facts["europe"][1].qa[0].question == "What is the capital of France?"
    assert facts["europe"][1].qa[0].answer == "Paris"
    passages = quiz.quiz_passages(facts, random.Random(0), rounds=1)
    assert len(passages) == 1 and len(passages[0][1]) == 2


def test_fortune_filter(tmp_path: Path) -> None:
    assert english.fortune_text("Today is what happened to yesterday.\n") == "Today is what happened to yesterday."
    assert english.fortune_text("A verbal contract isn't worth the paper\nit's written on.\n\t\t-- Samuel Goldwyn\n") \
        == "A verbal contract isn't worth the paper it's written on."
    assert english.fortune_text("<james> abuse me. I'm so lame\n") is None
    assert english.fortune_text("Q:\tWhat is it?\nA:\tNothing at all.\n") is None
    assert english.fortune_text("   /\\_/\\\n  ( o.o )\n   > ^ <\n") is None
    assert english.fortune_text("interlard - vt., to intersperse; diversify\n") is None
    assert english.fortune_text(" ".join(["word"] * 30)) is None
    (tmp_path / "wisdom").write_text("Plain words are best.\n%\n" + "Too\nmany\nlines\nhere.\n%\n")
    (tmp_path / "art").write_text("A picture of a fine cat.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\0\0")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "rude").write_text("Something offensive is said here.\n%\n")
    assert english.fortunes(tmp_path) == ["Plain words are best."]


def test_wordnet_lines() -> None:
    line = (
        "10954498 18 n 02 Einstein 0 Albert_Einstein 0 002 @i 10428004 n 0000 + 03031248 a 0101 | physicist "
        "born in Germany who formulated the special theory of relativity; Einstein also proposed that light "
        "consists of photons (1879-1955)  \n"
    )
    synset = wordnet.parse_line(line)
    assert synset is not None
    assert synset.words == ("Einstein", "Albert Einstein") and synset.pointers == (("@i", "10428004"),)
    text, qa = wordnet.person_passage(synset)
    assert text == ("Albert Einstein, who lived from 1879 to 1955, was a physicist born in Germany who formulated "
                    "the special theory of relativity.")
    langs = ("en", "de", "it", "zh")
    assert {(q.lang, q.answer) for q in qa} == {(lang, y) for lang in langs for y in ("1879", "1955")}
    assert wordnet.parse_line("  1 This software and database is provided ...") is None
    assert wordnet.with_article("European bunting") == "a European bunting"
    assert wordnet.with_article("capital of France") == "the capital of France"
    assert wordnet.with_article("any of several trees") == "any of several trees"
    assert wordnet.plural_head("perennial herbs of Europe") and not wordnet.plural_head("perennial herb of Europe")
