"""Parallel text from the Debian Reference and the GIMP help, on crafted DocBook pages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tympan.training.corpus import helpdocs, manuals, sources
from tympan.training.corpus.sources import SourceError, manual_roots

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian package dpkg)")


def _page(body: str) -> str:
    """A page as DocBook XSL writes it, with the navigation that must not count as text."""
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Some title</title></head><body>\n'
        '<div class="navheader"><table><tr><th colspan="3">Chapter 2. Debian package management</th></tr></table>'
        "</div>\n" + body + '\n<div class="navfooter"><p>Go back to the previous page now</p></div></body></html>'
    )


def _write(root: Path, name: str, body: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(_page(body), encoding="utf-8")


def _check_filters(pairs: list[tuple[str, dict[str, str]]]) -> None:
    for en, translations in pairs:
        assert helpdocs.english_reject(en) is None, en
        assert translations
        for lang, target in translations.items():
            assert helpdocs.target_reject(en, target, lang) is None, (en, lang, target)


# --- Debian Reference: one page per chapter, ch02.<lang>.html, sections with named ids -----------

_DR_CH02 = {
    "en": """<div class="chapter"><div class="titlepage">
<h1 class="title"><a id="_debian_package_management"/>Chapter 2.
 Debian package management</h1></div>
<div class="toc"><p><strong>Table of Contents for this chapter</strong></p></div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="_package_configuration"/>2.1.
 Basic package configuration</h2></div>
<p>Here are some key points for package configuration on the Debian system.</p>
<p>Edit the file "/etc/apt/sources.list" as root.</p>
<p>The recent <code class="literal">vim</code> starts itself in the sane mode.<a href="#ftn.idm2039" class="footnote"
 id="idm2039"><sup class="footnote">[1]</sup></a></p>
<pre class="screen">$ sudo apt-get update and then some more words here</pre>
<p>Too short.</p>
</div>
<div class="section"><div class="titlepage">
<h2 class="title"><a id="_basic_precautions"/>2.2. Some basic precautions</h2>
</div>
<p>Do not install packages from random places.</p>
<p>Always keep a backup of your important data.</p>
</div></div>""",
    # An extra paragraph at the start of 2.2: by position it would pair every paragraph after it
    # with the wrong English.
    "de": """<div class="chapter"><div class="titlepage">
<h1 class="title"><a id="_debian_package_management"/>Kapitel 2.
 Debian-Paketmanagement</h1></div>
<div class="toc"><p><strong>Inhaltsverzeichnis dieses Kapitels</strong></p></div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="_package_configuration"/>2.1.
 Grundlegende Paketkonfiguration</h2></div>
<p>Hier einige wichtige Punkte für die Paketkonfiguration auf einem Debian-System.</p>
<p>Bearbeiten Sie die Datei "/etc/apt/sources.list" als root.</p>
<p>Das aktuelle <code class="literal">vim</code> startet selbst im vernünftigen Modus.<a href="#ftn.idm2041"
 class="footnote" id="idm2041"><sup class="footnote">[1]</sup></a></p>
<pre class="screen">$ sudo apt-get update und dann noch mehr Wörter hier</pre>
<p>Zu kurz.</p>
</div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="_basic_precautions"/>2.2.
 Einige grundlegende Vorsichtsmaßnahmen</h2></div>
<p>Dieser Absatz steht nur in der deutschen Übersetzung.</p>
<p>Installieren Sie keine Pakete aus zufälligen Quellen.</p>
<p>Sichern Sie immer Ihre wichtigen Daten.</p>
</div></div>""",
    # One paragraph left in English (po4a keeps the original when there is no translation).
    "it": """<div class="chapter"><div class="titlepage">
<h1 class="title"><a id="_debian_package_management"/>Capitolo 2.
 Gestione dei pacchetti Debian</h1></div>
<div class="toc"><p><strong>Indice di questo capitolo</strong></p></div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="_package_configuration"/>2.1.
 Configurazione di base dei pacchetti</h2></div>
<p>Here are some key points for package configuration on the Debian system.</p>
<p>Modificare il file "/etc/apt/sources.list" come root.</p>
<p>Il recente <code class="literal">vim</code> si avvia nella modalità sensata.<a href="#ftn.idm2039"
 class="footnote" id="idm2039"><sup class="footnote">[1]</sup></a></p>
<pre class="screen">$ sudo apt-get update e poi altre parole qui</pre>
<p>Troppo breve.</p>
</div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="_basic_precautions"/>2.2.
 Alcune precauzioni di base</h2></div>
<p>Non installare pacchetti da posti casuali.</p>
<p>Conservare sempre un backup dei propri dati importanti.</p>
</div></div>""",
}
# Chapter 3 exists in English and Chinese only, and repeats a sentence of chapter 2.
_DR_CH03 = {
    "en": """<div class="chapter"><div class="titlepage">
<h1 class="title"><a id="_the_system_initialization"/>Chapter 3.
 The system initialization</h1></div>
<p>ALWAYS keep a backup of your important data!</p></div>""",
    # The Chinese source is wrapped at line ends, between characters.
    "zh": """<div class="chapter"><div class="titlepage">
<h1 class="title"><a id="_the_system_initialization"/>第 3 章
 系统初始化</h1></div>
<p>始终备份你的
 重要数据！</p></div>""",
}


def _debian_reference(tmp_path: Path) -> dict[str, Path]:
    roots = {lang: tmp_path / lang / "usr/share/debian-reference" for lang in ("en", "de", "it", "zh")}
    for chapter, texts in (("ch02", _DR_CH02), ("ch03", _DR_CH03)):
        for lang, body in texts.items():
            _write(roots[lang], f"{chapter}.{manuals.DEBIAN_REFERENCE_SUFFIX[lang]}.html", body)
    return roots


def test_debian_reference_alignment(tmp_path: Path) -> None:
    pairs = manuals.debian_reference_pairs(_debian_reference(tmp_path))
    assert pairs == [
        ("Debian package management", {"de": "Debian-Paketmanagement", "it": "Gestione dei pacchetti Debian"}),
        ("Basic package configuration",
         {"de": "Grundlegende Paketkonfiguration", "it": "Configurazione di base dei pacchetti"}),
        ("Here are some key points for package configuration on the Debian system.",
         {"de": "Hier einige wichtige Punkte für die Paketkonfiguration auf einem Debian-System."}),
        ("The recent vim starts itself in the sane mode.",
         {"de": "Das aktuelle vim startet selbst im vernünftigen Modus.",
          "it": "Il recente vim si avvia nella modalità sensata."}),
        ("Some basic precautions", {"it": "Alcune precauzioni di base"}),
        ("Do not install packages from random places.", {"it": "Non installare pacchetti da posti casuali."}),
        # No German from 2.2, its heading included (its paragraphs no longer correspond); the
        # Chinese of the same sentence, in chapter 3, joins the first copy.
        ("Always keep a backup of your important data.",
         {"it": "Conservare sempre un backup dei propri dati importanti.", "zh": "始终备份你的重要数据！"}),
        ("The system initialization", {"zh": "系统初始化"}),
    ]
    _check_filters(pairs)


def test_debian_reference_without_a_language(tmp_path: Path) -> None:
    roots = _debian_reference(tmp_path)
    pairs = manuals.debian_reference_pairs({"en": roots["en"], "it": roots["it"]})
    assert {lang for _, t in pairs for lang in t} == {"it"}
    assert len(pairs) == 6
    with pytest.raises(ValueError, match="English"):
        manuals.debian_reference_pairs({"de": roots["de"]})


# --- GIMP help: one page per section, same file names, generated ids that differ ----------------

_GIMP_CROP = {
    "en": """<div class="sect2"><div class="titlepage">
<h3 class="title"><a id="gimp-tool-crop"></a>4.4. Crop</h3></div>
<a id="idm15121" class="indexterm"></a>
<div class="figure"><a id="idm15130"></a>
<p class="title"><strong>Figure 14.127. The Crop tool in the Toolbox</strong></p>
<div class="figure-contents"><div class="mediaobject">
<img src="images/toolbox/crop.png" alt="Crop tool"/></div></div></div>
<p>
    The Crop Tool is used to crop or clip an image.
  </p>
<p>To start, click on <span class="guiicon"><img src="images/crop-22.png"/></span> in the Toolbox.</p>
<div class="sect3"><div class="titlepage"><h4 class="title"><a id="idm15150"></a>4.4.1. Activating the Tool</h4></div>
<p>You can activate this tool in different ways:</p>
<div class="itemizedlist"><ul class="itemizedlist"><li class="listitem"><p>From the image menu bar
 <span class="guimenu">Tools</span> → <span class="guimenuitem">Crop</span>,</p></li>
<li class="listitem"><p>by pressing the keyboard shortcut that you have set.</p></li></ul></div></div>
<div class="sect3"><div class="titlepage"><h4 class="title"><a id="idm15170"></a>4.4.2. Options</h4></div>
<p>The Crop Tool keeps the layers of the image. The canvas size is changed by the crop. Hold Shift to keep the
 aspect ratio fixed while you drag the mouse over the image.</p></div></div>""",
    # Other generated ids; the German drops the second list item, so 4.4.1 gives no pairs.
    "de": """<div class="sect2"><div class="titlepage">
<h3 class="title"><a id="gimp-tool-crop"></a>4.4. Zuschneiden</h3>
</div>
<a id="idm16121" class="indexterm"></a>
<div class="figure"><a id="idm16130"></a><p class="title"><strong>Abbildung 14.127. Das Zuschneiden-Werkzeug im
 Werkzeugkasten</strong></p>
<div class="figure-contents"><div class="mediaobject">
<img src="images/toolbox/crop.png" alt="Crop tool"/></div></div></div>
<p>Das Zuschneiden-Werkzeug wird benutzt, um ein Bild zu beschneiden.</p>
<p>Klicken Sie zu Beginn auf <span class="guiicon"><img src="images/crop-22.png"/></span> im Werkzeugkasten.</p>
<div class="sect3"><div class="titlepage"><h4 class="title"><a id="idm16150"></a>4.4.1. Aktivieren des Werkzeugs</h4>
</div>
<p>Sie können das Werkzeug auf verschiedene Arten aktivieren:</p>
<div class="itemizedlist"><ul class="itemizedlist"><li class="listitem"><p>Über das Bildmenü
 <span class="guimenu">Werkzeuge</span> → <span class="guimenuitem">Zuschneiden</span>,</p></li></ul></div></div>
<div class="sect3"><div class="titlepage"><h4 class="title"><a id="idm16170"></a>4.4.2. Optionen</h4></div>
<p>Das Zuschneiden-Werkzeug behält die Ebenen des Bildes. Die Größe der Leinwand wird beim Zuschneiden geändert.
 Halten Sie Shift gedrückt, um das Seitenverhältnis beim Ziehen mit der Maus über das Bild festzuhalten.</p></div>
</div>""",
}
# Glossary entries are sorted in each language's own order: only their ids align them.
_GIMP_GLOSSARY = {
    "en": """<div class="glossary"><div class="titlepage"><h1 class="title"><a id="glossary"></a>Glossary</h1></div>
<dl><dt><a id="glossary-alpha"></a>Alpha channel</dt><dd><p>An alpha channel holds the transparency of each
 pixel.</p></dd>
<dt><a id="glossary-layer"></a>Layer</dt><dd><p>A layer is like a sheet of clear glass.</p></dd></dl></div>""",
    "it": """<div class="glossary"><div class="titlepage"><h1 class="title"><a id="glossary"></a>Glossario</h1></div>
<dl><dt><a id="glossary-alpha"></a>Canale alfa</dt><dd><p>Un canale alfa contiene la trasparenza di ogni
 pixel.</p></dd>
<dt><a id="glossary-layer"></a>Livello</dt>
<dd><p>Un livello è come un foglio di vetro trasparente.</p></dd></dl></div>""",
    "de": """<div class="glossary"><div class="titlepage"><h1 class="title"><a id="glossary"></a>Glossar</h1></div>
<dl><dt><a id="glossary-layer"></a>Ebene</dt><dd><p>Eine Ebene ist wie eine Scheibe aus klarem Glas.</p></dd>
<dt><a id="glossary-alpha"></a>Alphakanal</dt><dd><p>Ein Alphakanal enthält die Transparenz jedes Pixels.</p></dd>
</dl></div>""",
}
# The index, sorted per language too, has no ids: it gives nothing.
_GIMP_INDEX = {
    "en": """<div class="index"><div class="indexdiv"><dl><dt>Alpha channel in the image</dt><dt>Layer masks
 of the image</dt></dl></div></div>""",
    "de": """<div class="index"><div class="indexdiv"><dl><dt>Ebenenmasken des Bildes</dt><dt>Alphakanal des Bildes
 hier</dt></dl></div></div>""",
}


def _gimp(tmp_path: Path) -> dict[str, Path]:
    roots = {lang: tmp_path / lang / f"usr/share/gimp/2.0/help/{lang}" for lang in ("en", "de", "it")}
    for name, texts in (("gimp-tool-crop.html", _GIMP_CROP), ("glossary.html", _GIMP_GLOSSARY),
                        ("gimp-help-index.html", _GIMP_INDEX)):
        for lang, body in texts.items():
            _write(roots[lang], name, body)
    return roots


def test_gimp_help_alignment(tmp_path: Path) -> None:
    pairs = manuals.gimp_help_pairs(_gimp(tmp_path))
    de_options = ("Das Zuschneiden-Werkzeug behält die Ebenen des Bildes.", "Die Größe der Leinwand wird beim"
                  " Zuschneiden geändert.", "Halten Sie Shift gedrückt, um das Seitenverhältnis beim Ziehen mit der"
                  " Maus über das Bild festzuhalten.")
    assert pairs == [
        ("The Crop tool in the Toolbox", {"de": "Das Zuschneiden-Werkzeug im Werkzeugkasten"}),
        ("The Crop Tool is used to crop or clip an image.",
         {"de": "Das Zuschneiden-Werkzeug wird benutzt, um ein Bild zu beschneiden."}),
        # "To start, click on [picture] in the Toolbox." is not a whole sentence: left out.
        # The list of 4.4.1 lost an item in German: no pairs from that section, its heading included.
        # 4.4.2's paragraph has 32 words: split, as the German splits into as many sentences.
        ("The Crop Tool keeps the layers of the image.", {"de": de_options[0]}),
        ("The canvas size is changed by the crop.", {"de": de_options[1]}),
        ("Hold Shift to keep the aspect ratio fixed while you drag the mouse over the image.", {"de": de_options[2]}),
        ("An alpha channel holds the transparency of each pixel.",
         {"it": "Un canale alfa contiene la trasparenza di ogni pixel.",
          "de": "Ein Alphakanal enthält die Transparenz jedes Pixels."}),
        ("A layer is like a sheet of clear glass.",
         {"it": "Un livello è come un foglio di vetro trasparente.",
          "de": "Eine Ebene ist wie eine Scheibe aus klarem Glas."}),
    ]
    _check_filters(pairs)


def test_page_blocks_text_and_segments() -> None:
    blocks = manuals.page_blocks(_page(_GIMP_CROP["en"]))
    texts = [b.text for b in blocks]
    assert "From the image menu bar Tools - Crop," in texts  # menu arrows as in the LibreOffice help
    assert "Crop" in texts and "Options" in texts  # titles lose their DocBook labels
    assert not any("Chapter" in t or "previous page" in t for t in texts)  # navigation
    picture = next(b for b in blocks if b.text.startswith("To start"))
    assert picture.picture and not blocks[0].picture
    assert [b.segment for b in blocks[:2]] == ["gimp-tool-crop#0", "gimp-tool-crop#0"]
    assert blocks[-1].segment == "gimp-tool-crop#2"  # the second heading after the named id
    assert blocks[-1].signature.endswith("div.sect2/div.sect3/p")


def test_sentence_split() -> None:
    assert manuals.split_sentences("Use e.g. the menu. Then click OK. Done!", "en") == [
        "Use e.g. the menu.", "Then click OK.", "Done!"]
    assert manuals.split_sentences("Wählen Sie z. B. Datei. Am 2. Mai geht es los.", "de") == [
        "Wählen Sie z. B. Datei.", "Am 2. Mai geht es los."]
    assert manuals.split_sentences("Vedi ad es. il file. J. Smith lo scrisse.", "it") == [
        "Vedi ad es. il file.", "J. Smith lo scrisse."]
    assert manuals.split_sentences("第一句话。“第二句。”第三句！", "zh") == ["第一句话。", "“第二句。”", "第三句！"]
    assert manuals.split_sentences("Version 2.10 is out.", "en") == ["Version 2.10 is out."]
    assert manuals.split_sentences("Set it. (It is off. Really.) Done.", "en") == [
        "Set it.", "(It is off. Really.)", "Done."]
    assert manuals.split_sentences("设置它。（默认关闭。真的。）完成。", "zh") == [
        "设置它。", "（默认关闭。真的。）", "完成。"]


def test_sentence_pairs_need_the_same_shape() -> None:
    en = "Set the radius to 5 pixels for a small brush. Larger values give a softer edge to the stroke."
    good = "Setzen Sie den Radius auf 5 Pixel für einen kleinen Pinsel. Größere Werte ergeben einen weicheren Rand."
    assert manuals._sentence_pairs(en, good, "de") == list(zip(manuals.split_sentences(en, "en"),
                                                               manuals.split_sentences(good, "de"), strict=True))
    # Joined into one sentence: nothing.
    assert manuals._sentence_pairs(en, good.replace(". G", ", und g"), "de") == []
    # Same count and plausible lengths, but the number sits in the other sentence: the
    # sentences tell different things.
    moved = "Setzen Sie einen kleinen Radius für einen kleinen Pinsel. Größere Werte als 5 ergeben weichere Ränder."
    assert manuals._sentence_pairs(en, moved, "de") == []


def test_duplicates_are_merged() -> None:
    pairs = [("Click OK.", {"de": "Klicken Sie auf OK."}), ("Save the file.", {"it": "Salvare il file."}),
             ("click  ok", {"de": "Auf OK klicken.", "zh": "单击确定。"})]
    assert manuals.merge_duplicates(pairs) == [
        ("Click OK.", {"de": "Klicken Sie auf OK.", "zh": "单击确定。"}),
        ("Save the file.", {"it": "Salvare il file."}),
    ]
    assert pairs[0][1] == {"de": "Klicken Sie auf OK."}, "the input was changed"


def test_libreoffice_family(tmp_path: Path) -> None:
    family = manuals.FAMILIES["libreoffice"]
    assert family.aligner is manuals.libreoffice_pairs
    assert dict(family.packages) == {lang: pkg for lang, (pkg, _) in sources.LIBREOFFICE_HELP.items()}
    assert set(manuals.FAMILIES) == {"libreoffice", "debian-reference", "gimp-help"}
    assert manuals.FAMILIES["gimp-help"].packages["zh"] == "gimp-help-zh-cn"
    html = {
        "en": '<div id="DisplayArea"><p id="par_id1">Choose Format - Cells to open the dialog.</p></div>',
        "de": '<div id="DisplayArea"><p id="par_id1">Wählen Sie Format - Zellen, um den Dialog zu öffnen.</p></div>',
    }
    roots = {}
    for lang, text in html.items():
        for page in ("a", "b"):  # the same paragraph on two pages: kept once
            (tmp_path / lang / "text" / "shared").mkdir(parents=True, exist_ok=True)
            (tmp_path / lang / "text" / "shared" / f"{page}.html").write_text(text, encoding="utf-8")
        roots[lang] = tmp_path / lang
    assert family.aligner(roots) == [
        ("Choose Format - Cells to open the dialog.", {"de": "Wählen Sie Format - Zellen, um den Dialog zu öffnen."})]


# --- output --------------------------------------------------------------------------------------


def test_jsonl_writer(tmp_path: Path) -> None:
    out = tmp_path / "out" / "pairs.jsonl"
    out.parent.mkdir()
    out.write_text("old content\n", encoding="utf-8")
    pairs = [("Click the button.", {"zh": "单击按钮。", "de": "Klicken Sie auf die Schaltfläche."}),
             ("Save the file.", {"it": "Salvare il file."})]
    assert manuals.write_jsonl(out, "gimp-help", pairs) == 2
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [list(r) for r in records] == [["family", "id", "en", "de", "zh"], ["family", "id", "en", "it"]]
    assert records[0]["zh"] == "单击按钮。" and records[1]["it"] == "Salvare il file."
    assert {r["family"] for r in records} == {"gimp-help"}
    assert records[0]["id"].startswith("gimp-help-") and records[0]["id"] != records[1]["id"]
    assert records[0]["id"] == manuals.pair_id("gimp-help", "click the button")
    assert "单击" in out.read_text(encoding="utf-8"), "not written as UTF-8"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.jsonl"], "a temporary file was left"
    assert manuals.sample(pairs, 1, seed=0) in ([pairs[0]], [pairs[1]])
    assert manuals.sample(pairs, None, seed=0) == pairs == manuals.sample(pairs, 5, seed=0)


# --- packages ------------------------------------------------------------------------------------


def _deb(build: Path, debs: Path, package: str, files: dict[str, str]) -> None:
    """A real (tiny) .deb, put where `apt-get download` would have put it."""
    tree = build / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.org>\n"
        "Description: test package\n", encoding="utf-8")
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text, encoding="utf-8")
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--root-owner-group", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)


def test_bad_family_or_language() -> None:
    with pytest.raises(SourceError, match="no manuals family 'gimp'"):
        manual_roots(Path("unused"), "gimp")
    with pytest.raises(SourceError, match="no gimp-help package for 'fr'"):
        manual_roots(Path("unused"), "gimp-help", ("en", "fr"))
    with pytest.raises(SourceError, match="no manuals family"):
        manuals.family_pairs(Path("unused"), "gimp")


@needs_dpkg
def test_package_without_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "sources"
    _deb(tmp_path / "build", root / "debs", "gimp-help-en", {"usr/share/doc/gimp-help-en/copyright": "GPL\n"})
    with pytest.raises(SourceError, match=r"gimp-help-en: unpacked into .*, but .*help/en is missing"):
        manual_roots(root, "gimp-help", ("en",))


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_package_apt_cannot_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An unknown name fails from the local package lists, without the network.
    monkeypatch.setitem(sources.MANUALS, "gimp-help", {"en": ("tympan-no-such-package", "usr/share/x")})
    with pytest.raises(SourceError, match="apt-get download tympan-no-such-package"):
        manual_roots(tmp_path, "gimp-help", ("en",))


@needs_dpkg
def test_command_line_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = _gimp(tmp_path / "pages")
    root = tmp_path / "sources"
    for lang, (package, folder) in sources.MANUALS["gimp-help"].items():
        have = sorted(pages[lang].glob("*.html")) if lang in pages else []
        files = {f"{folder}/{p.name}": p.read_text(encoding="utf-8") for p in have}
        _deb(tmp_path / "build", root / "debs", package, files or {f"{folder}/index.html": _page("")})
    out = tmp_path / "gimp.jsonl"
    assert manuals.main(["--family", "gimp-help", "--out", str(out), "--root", str(root)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 7 and records[0]["en"] == "The Crop tool in the Toolbox"
    assert json.loads(capsys.readouterr().out)["by_lang"] == {"de": 7, "it": 2, "zh": 0}
    roots = manual_roots(root, "gimp-help")
    assert roots["zh"] == root / "gimp-help" / "zh" / "usr/share/gimp/2.0/help/zh_CN"
    # Again, limited: nothing fetched or unpacked anew, a seeded sample in document order.
    stamp = (root / "gimp-help" / "en" / "SOURCE_DEB").stat().st_mtime_ns
    assert manuals.main(["--family", "gimp-help", "--out", str(out), "--root", str(root), "--limit", "3",
                         "--seed", "7"]) == 0
    limited = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(limited) == 3 and [r for r in records if r in limited] == limited
    assert (root / "gimp-help" / "en" / "SOURCE_DEB").stat().st_mtime_ns == stamp
    # A broken package: an error naming it, and no output file touched.
    shutil.rmtree(root / "gimp-help" / "it" / "usr")
    capsys.readouterr()
    assert manuals.main(["--family", "gimp-help", "--out", str(tmp_path / "none.jsonl"), "--root", str(root)]) == 2
    assert "gimp-help-it" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()
