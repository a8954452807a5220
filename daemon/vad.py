"""Utterance segmentation of a live stream: webrtcvad frames, a speech gate, endpointing.

Audio (mono float32 at 16 kHz, pushed in chunks of any length) is cut into 10/20/30 ms frames.
Each frame gets a webrtcvad decision and features of a 32 ms window ending with it: band energy
(100-4000 Hz, dBFS), harmonicity (normalised autocorrelation peak at 80-400 Hz pitch lags, with
that lag), tonality (energy outside the strongest spectral peak, dB) and crest (peak/mean energy
of 4 ms blocks). webrtcvad alone calls tones and loud noise speech, so a frame is

- *active* (speech going on) when webrtcvad says speech, the energy is above an absolute floor
  and above a tracked noise floor (minimum over the last 2 s) by a margin (a smaller one for
  periodic frames: weak vowels in noise), the spectrum is not one peak (tones) and the energy not
  one impulse (clicks). Steady sounds (hum, fans, noise) become the floor within 2 s.
- *voiced* when it is also periodic; white and pink noise never are.

An utterance opens on a run of consecutive voiced frames (a vowel: clicks make none), starting
at the first active frame of the last 300 ms minus a pre-roll. The gate accepts it only with
enough voiced audio in total, a pitch that moves (a click track or buzz repeats one pitch lag)
and, once its speech spans 600 ms, syllable-rate (2-8 Hz) modulation of its energy envelope
(mains hum and drones are flat). `UtteranceStarted` is emitted only when the gate accepts, so a
gated-out sound produces no event at all; `UtteranceDropped` follows a started utterance only
if later audio makes it fail. Whispered speech has no voicing and is not detected.

Endpoint silence (`silence_ms`), measured: 16 recordings of 6-8 sentences with commas (5
espeak-ng voices x 120/160/200 wpm, and the 8 ALSA recordings; 98 sentences joined by 1 s gaps,
523 s), clean and under pink (~13 dB SNR) and white (~10 dB SNR) noise; 30 ms frames. Split: a
sentence cut into two or more utterances. Delay: endpoint minus the true end of speech (shorter
in noise, where the faint last 50-100 ms of a sentence is buried).

    silence_ms   split (of 98)          mean endpoint delay, ms
                 clean  pink  white     clean  pink  white
       200         49    76    77        207    123   101
       300         31    54    65        297    213   191
       400          8    24    29        417    333   311
       500          0    15    21        507    423   401
       600          0     1     1        597    513   491    <- default
       700          0     0     0        717    633   611
      1000          6*    0     0       5151*  1229   909    * the 1 s gaps no longer end
                                                           utterances: 29 merges, max-length cuts

Slow speakers' comma pauses reach ~470 ms and noise lengthens them (the faint edges are lost),
so 500 ms splits 15-21 % of noisy sentences; 600 ms is the shortest without that. SpeechPaused
(pause_ms 90) came ~90 ms after the end of speech in clean audio, ~3 times per utterance (7-9
in noise: every pause a speculation); the default is 200 since a speculation is a Whisper reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

from tympan.config import ConfigError, check, check_fields, non_negative, positive, probability
from tympan.runtime.turn import FLAT, Prosody, prosody

SAMPLE_RATES = (8000, 16000, 32000, 48000)  # what webrtcvad accepts


def _aggressiveness(value: int) -> str | None:
    return None if value in (0, 1, 2, 3) else f"must be 0, 1, 2 or 3 (the webrtcvad mode), got {value}"


def _frame_ms(value: int) -> str | None:
    return None if value in (10, 20, 30) else f"must be 10, 20 or 30 (webrtcvad frame sizes), got {value}"


def _dbfs(value: float) -> str | None:
    return None if value <= 0 else f"must be <= 0 (dBFS), got {value}"


def _negative_db(value: float) -> str | None:
    return None if value < 0 else f"must be < 0 dB, got {value}"


def _above_one(value: float) -> str | None:
    return None if value > 1 else f"must be > 1, got {value}"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


@dataclass(frozen=True)
class VadConfig:
    # webrtcvad mode: 0 lets the most through, 3 rejects the most.
    aggressiveness: int = field(default=2, metadata=check(_aggressiveness))
    frame_ms: int = field(default=30, metadata=check(_frame_ms))
    # Audio kept before the detected onset so soft first consonants are not clipped.
    pre_roll_ms: int = field(default=120, metadata=check(non_negative))
    # Speech starts on this much consecutive voiced audio; its onset is searched this far back.
    start_voiced_ms: int = field(default=60, metadata=check(positive))
    onset_search_ms: int = field(default=300, metadata=check(positive))
    # Silence that ends an utterance (chosen by measurement: see the module docstring).
    silence_ms: int = field(default=600, metadata=check(positive))
    # Silence before SpeechPaused (the speculative decode point). One frame reacts fastest but
    # pauses ~10 times per sentence (stop closures, word gaps); 90 ms pauses ~3 times. Since a
    # speculation is a Whisper reading (about 250 ms of both cores), 200 ms: on the 14 recordings
    # 17 % less CPU than at 90, the final still decoded before the 600 ms endpoint (docs/hearing.md).
    pause_ms: int = field(default=200, metadata=check(positive))
    max_utterance_s: float = field(default=20.0, metadata=check(positive))
    # At max length the cut goes at the quietest point of this last stretch.
    cut_search_s: float = field(default=2.0, metadata=check(positive))
    # Utterances with less voiced audio are dropped as blips.
    min_voiced_ms: int = field(default=90, metadata=check(non_negative))
    # Frame gate: absolute floor, margins over the tracked noise floor, the tracker's window.
    energy_floor_db: float = field(default=-55.0, metadata=check(_dbfs))
    snr_margin_db: float = field(default=8.0, metadata=check(non_negative))
    periodic_margin_db: float = field(default=3.0, metadata=check(non_negative))
    noise_window_s: float = field(default=2.0, metadata=check(positive))
    min_harmonicity: float = field(default=0.5, metadata=check(probability))
    max_tonality_db: float = field(default=-25.0, metadata=check(_negative_db))
    max_crest: float = field(default=5.0, metadata=check(_above_one))
    # Utterance gate: share of voiced frames at one pitch lag (+-1 %) above which it is a machine;
    # 2-8 Hz envelope modulation (RMS, dB) required once speech spans modulation_min_ms.
    max_pitch_share: float = field(default=0.6, metadata=check(_share))
    min_modulation_db: float = field(default=2.0, metadata=check(non_negative))
    modulation_min_ms: int = field(default=600, metadata=check(positive))

    def __post_init__(self) -> None:
        check_fields(self, "vad")  # built in code too, not only read from TOML
        if self.pause_ms > self.silence_ms:
            raise ConfigError(f"vad.pause_ms: must be <= silence_ms ({self.silence_ms}), got {self.pause_ms}")
        if self.cut_search_s >= self.max_utterance_s:
            raise ConfigError(f"vad.cut_search_s: must be < max_utterance_s ({self.max_utterance_s}), "
                              f"got {self.cut_search_s}")
        if self.max_utterance_s * 1000 < 2 * (self.pre_roll_ms + self.onset_search_ms):
            raise ConfigError("vad.max_utterance_s: must be at least twice pre_roll_ms + onset_search_ms, "
                              f"got {self.max_utterance_s}")


@dataclass(frozen=True)
class UtteranceStarted:
    segment_id: int
    start: float


@dataclass(frozen=True)
class SpeechPaused:
    """Silence after speech: `audio` is the utterance as it would end now (decode it speculatively); `prosody`, how
    its speech ended (for the end of turn)."""

    segment_id: int
    speech_end: float
    audio: np.ndarray
    prosody: Prosody = FLAT


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back before the endpoint: the speculation of the last pause is void."""

    segment_id: int


@dataclass(frozen=True)
class UtteranceEnded:
    """For reason "silence" (and "end_of_stream" after a pause) `audio` is the very array of the last
    SpeechPaused, and `speech_end` equals it. The audio covers [start, end) of the stream."""

    segment_id: int
    audio: np.ndarray
    start: float
    end: float
    speech_end: float
    reason: str  # "silence" | "turn" (end_turn) | "max_length" | "end_of_stream"


@dataclass(frozen=True)
class UtteranceDropped:
    """A started utterance was rejected after all ("too_short" or "not_speech"): forget it."""

    segment_id: int
    reason: str


Event = UtteranceStarted | SpeechPaused | SpeechResumed | UtteranceEnded | UtteranceDropped


def _frames(ms: float, frame_ms: int) -> int:
    return max(1, math.ceil(ms / frame_ms - 1e-9))


class _Features:
    """Per-frame features of a 32 ms analysis window (ending at the frame's end)."""

    def __init__(self, sample_rate: int) -> None:
        n = sample_rate * 32 // 1000
        self.n = n
        self.window = np.hanning(n)
        freqs = np.fft.rfftfreq(2 * n, 1 / sample_rate)  # 2n points: the autocorrelation must not wrap
        self.outside = (freqs < 100) | (freqs > 4000)  # no DC, no mains hum fundamental
        self.emphasis = freqs / 1000.0
        # Mean square of the band-limited signal from its power spectrum (Parseval).
        self.scale = 1.0 / (n * float(np.sum(self.window**2)))
        spec_w = np.fft.rfft(self.window, 2 * n)
        acf_w = np.fft.irfft(spec_w.real**2 + spec_w.imag**2)[:n]
        self.lo, self.hi = sample_rate // 400, sample_rate // 80  # pitch lags for 80-400 Hz
        # Dividing by the window's own autocorrelation undoes its taper (Boersma 1993).
        self.window_acf = np.maximum(acf_w[self.lo:self.hi] / acf_w[0], 0.1)
        self.peak_half = 4  # +-4 bins of a 2n-point spectrum: a Hann main lobe
        self.blocks = 8  # 4 ms each

    def __call__(self, x: np.ndarray) -> tuple[float, float, int, float, float]:
        """-> (band energy dBFS, harmonicity 0-1, pitch lag, tonality dB, crest)."""
        spec = np.fft.rfft(x * self.window, 2 * self.n)
        power = spec.real**2 + spec.imag**2
        power[self.outside] = 0.0
        energy = float(power.sum())
        db = 10.0 * math.log10(energy * self.scale + 1e-12)
        if energy * self.scale <= 1e-12:
            return db, 0.0, 0, 0.0, 1.0
        # Tilt (power x f) before the autocorrelation: low-frequency noise (brown, rumble) would
        # otherwise look periodic; harmonics still line up.
        acf = np.fft.irfft(power * self.emphasis)
        norm = acf[self.lo:self.hi] / self.window_acf
        k = int(np.argmax(norm))
        harmonicity = float(norm[k]) / float(acf[0])
        b = int(np.argmax(power))
        peak = float(power[max(0, b - self.peak_half):b + self.peak_half + 1].sum())
        tonality = 10.0 * math.log10(max(1.0 - peak / energy, 1e-6))
        blocks = x.reshape(self.blocks, -1)
        sub = np.einsum("ij,ij->i", blocks, blocks)
        crest = float(sub.max() / (sub.mean() + 1e-20))
        return db, harmonicity, self.lo + k, tonality, crest


def _modulation_db(env: np.ndarray, frame_rate: float) -> float:
    """RMS (dB) of the 2-8 Hz (syllable-rate) component of a dB energy envelope."""
    e = np.maximum(env, env.max() - 40.0)  # digital silence between words would dominate otherwise
    e = e - e.mean()
    spec = np.fft.rfft(e)
    freqs = np.arange(len(spec)) * frame_rate / len(e)
    band = (freqs >= 2.0) & (freqs <= 8.0)
    return math.sqrt(2.0 * float(np.sum(spec.real[band] ** 2 + spec.imag[band] ** 2))) / len(e)


def _pitch_share(lags: np.ndarray) -> float:
    """The largest share of pitch lags within +-1 % (at least one lag step) of a single lag."""
    s = np.sort(lags)
    tol = np.maximum(1, s // 100)
    counts = np.searchsorted(s, s + tol, side="right") - np.searchsorted(s, s - tol, side="left")
    return float(counts.max()) / len(s)


class Segmenter:
    """Cuts a live stream into utterances (see the module docstring). One per stream; not thread-safe.

    Memory is allocated once (max_utterance_s of audio plus small rings): hours of streaming
    hold no more than that.
    """

    _pend: np.ndarray  # a partial frame between pushes, and how many samples of it are held
    _npend: int
    _PITCH_MIN_MS = 90  # voiced audio needed before the pitch share is judged (3 frames at least)

    def __init__(self, cfg: VadConfig, sample_rate: int = 16000, turn_silence_ms: int | None = None) -> None:
        """`turn_silence_ms`: where the end of turn decides (end_turn), the silence that ends an utterance whose pause
        was announced (SpeechPaused sent): a last resort. A pause the gate refused still ends at cfg.silence_ms."""
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES} (webrtcvad), got {sample_rate}")
        self.cfg = cfg
        self.sample_rate = sample_rate
        fm = cfg.frame_ms
        self._f = sample_rate * fm // 1000
        self._frame_rate = 1000.0 / fm
        self._pre = math.ceil(cfg.pre_roll_ms / fm - 1e-9)
        self._search = _frames(cfg.onset_search_ms, fm)
        self._ring_n = self._search + self._pre
        self._start_run = _frames(cfg.start_voiced_ms, fm)
        self._silence = _frames(cfg.silence_ms, fm)
        self._turn_silence = _frames(turn_silence_ms, fm) if turn_silence_ms is not None else self._silence
        self._pause = _frames(cfg.pause_ms, fm)
        self._max = int(cfg.max_utterance_s * 1000 // fm)
        self._cut = _frames(cfg.cut_search_s * 1000, fm)
        self._min_voiced = math.ceil(cfg.min_voiced_ms / fm - 1e-9)
        self._mod_min = _frames(cfg.modulation_min_ms, fm)
        self._pitch_min = max(3, _frames(self._PITCH_MIN_MS, fm))
        self._features = _Features(sample_rate)
        self._reset()

    # -- public API ------------------------------------------------------------------------------

    def push(self, audio: np.ndarray) -> list[Event]:
        """Feed float32 samples in [-1, 1] (any length, also empty); returns the events they caused."""
        x = np.asarray(audio)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"audio must be float samples in [-1, 1], got {x.dtype} (PCM16: divide by 32768)")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():  # one NaN would poison 32 ms of features and the audio sent on
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        events: list[Event] = []
        f, held = self._f, self._npend
        if held + len(x) < f:
            self._pend[held:held + len(x)] = x
            self._npend += len(x)
            return events
        i = 0
        if held:
            i = f - held
            self._pend[held:] = x[:i]
            self._frame(self._pend, events)
        while i + f <= len(x):
            self._frame(x[i:i + f], events)
            i += f
        self._npend = len(x) - i
        self._pend[:self._npend] = x[i:]
        return events

    def finish(self) -> list[Event]:
        """End of stream: end the open utterance ("end_of_stream") or drop it; then reset for a new stream."""
        events: list[Event] = []
        if self._open:
            if not self._paused:
                # The last partial frame belongs to the speech going on.
                n = self._len * self._f
                self._audio[n:n + self._npend] = self._pend[:self._npend]
                self._freeze(extra=self._npend)
            self._close("end_of_stream", events)
        self._reset()
        return events

    def end_turn(self) -> list[Event]:
        """End the open utterance at its pause (reason "turn"): the end of turn came before the silence endpoint.
        Nothing happens unless speech is paused (its SpeechPaused was sent)."""
        events: list[Event] = []
        if self._open and self._paused and self._paused_sent:
            self._close("turn", events)
        return events

    def current(self) -> tuple[int, np.ndarray] | None:
        """The open, started utterance's id and audio so far (for partial decodes); None if none.

        The audio is a read-only view, valid until the next push or finish: copy what you keep.
        (Copying up to max_utterance_s on every call would cost more than the segmenting.)
        """
        if not (self._open and self._confirmed):
            return None
        if self._paused:
            return self._id, self._frozen
        view = self._audio[:self._len * self._f].view()
        view.flags.writeable = False
        return self._id, view

    @property
    def buffered_seconds(self) -> float:
        """Audio held: at most max_utterance_s plus a partial frame (the pre-roll ring when idle)."""
        frames = self._len if self._open else min(self._pos, self._ring_n)
        return (frames * self._f + self._npend) / self.sample_rate

    # -- state -----------------------------------------------------------------------------------

    def _reset(self) -> None:
        f, r, m = self._f, self._ring_n, self._max
        self._vad = webrtcvad.Vad(self.cfg.aggressiveness)
        self._pos = 0  # frames seen
        self._run = 0  # consecutive voiced frames
        self._pend = np.zeros(f, np.float32)  # a partial frame between pushes
        self._npend = 0
        self._hist = np.zeros(self._features.n)
        self._floor = np.full(_frames(self.cfg.noise_window_s * 1000, self.cfg.frame_ms), np.inf)
        self._next_id = 0
        self._min_start = 0  # utterances never overlap: the next starts after the last one's audio
        # Per frame: audio, energy (dB), active, voiced, pitch lag. Ring: recent frames, for pre-roll.
        self._ring = (np.zeros((r, f), np.float32), np.zeros(r), np.zeros(r, bool), np.zeros(r, bool),
                      np.zeros(r, np.int64))
        self._audio = np.zeros(m * f + f, np.float32)  # + a partial frame at the end of the stream
        self._db, self._active, self._voiced = np.zeros(m), np.zeros(m, bool), np.zeros(m, bool)
        self._lag = np.zeros(m, np.int64)
        self._close_state()

    def _close_state(self) -> None:
        self._open = False
        self._len = 0  # frames in the utterance
        self._start = 0  # its first frame in the stream
        self._confirmed = False
        self._continued = False  # the rest of a max-length cut: known to be speech already
        self._id = -1
        self._last_active = -1
        self._silent = 0
        self._nvoiced = 0
        self._paused = False
        self._paused_sent = False
        self._frozen = np.zeros(0, np.float32)
        self._frozen_end = 0.0
        self._verdict: str | None = None

    # -- per frame -------------------------------------------------------------------------------

    def _frame(self, x: np.ndarray, events: list[Event]) -> None:
        cfg, f = self.cfg, self._f
        hist = self._hist
        hist[:-f] = hist[f:]
        hist[-f:] = x
        db, harmonicity, lag, tonality, crest = self._features(hist)
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        speech = self._vad.is_speech(pcm, self.sample_rate)
        i = self._pos
        self._pos = i + 1
        # Minimum statistics: a steady sound (hum, fan, noise) becomes the floor within the window.
        self._floor[i % len(self._floor)] = db
        floor = float(self._floor.min())
        periodic = harmonicity >= cfg.min_harmonicity
        # Noise is never periodic, so periodic frames (weak vowels in noise) may sit closer to the floor.
        margin = cfg.periodic_margin_db if periodic else cfg.snr_margin_db
        active = (speech and db >= cfg.energy_floor_db and db >= floor + margin
                  and tonality > cfg.max_tonality_db and crest < cfg.max_crest)
        voiced = active and periodic
        slot = i % self._ring_n
        ring_audio, ring_db, ring_active, ring_voiced, ring_lag = self._ring
        ring_audio[slot] = x
        ring_db[slot], ring_active[slot], ring_voiced[slot], ring_lag[slot] = db, active, voiced, lag
        self._run = self._run + 1 if voiced else 0
        if not self._open:
            # A run of consecutive voiced frames is a vowel; clicks and stray noise frames make none.
            if self._run >= self._start_run:
                self._open_at(i)
            return
        self._append(x, db, active, voiced, lag)
        if self._paused:
            if active:
                self._paused = False
                if self._paused_sent:
                    events.append(SpeechResumed(self._id))
                self._paused_sent = False
            elif self._silent >= (self._turn_silence if self._paused_sent else self._silence):
                self._close("silence", events)
                return
        elif not active and self._silent >= self._pause:
            self._do_pause(events)
        elif not self._confirmed:
            self._maybe_confirm(events)
        if self._len >= self._max:
            self._max_length(events)

    def _open_at(self, i: int) -> None:
        first = max(0, i - self._search + 1, self._min_start)
        ring_audio, ring_db, ring_active, ring_voiced, ring_lag = self._ring
        onset = first + int(np.argmax(ring_active[np.arange(first, i + 1) % self._ring_n]))
        start = max(onset - self._pre, i - self._ring_n + 1, self._min_start, 0)
        n = i + 1 - start
        idx = np.arange(start, i + 1) % self._ring_n
        self._audio[:n * self._f] = ring_audio[idx].reshape(-1)
        self._db[:n], self._active[:n], self._voiced[:n] = ring_db[idx], ring_active[idx], ring_voiced[idx]
        self._lag[:n] = ring_lag[idx]
        self._open = True
        self._start = start
        self._len = n
        self._last_active = n - 1
        self._nvoiced = int(self._voiced[:n].sum())

    def _append(self, x: np.ndarray, db: float, active: bool, voiced: bool, lag: int) -> None:
        n, f = self._len, self._f
        self._audio[n * f:(n + 1) * f] = x
        self._db[n], self._active[n], self._voiced[n], self._lag[n] = db, active, voiced, lag
        self._len = n + 1
        if active:
            self._last_active = n
            self._silent = 0
            self._nvoiced += voiced
        else:
            self._silent += 1

    # -- decisions -------------------------------------------------------------------------------

    def _verdict_of(self, n: int) -> str | None:
        """None if the first n frames of the utterance pass the gate, else why not."""
        voiced = self._voiced[:n]
        nvoiced = int(voiced.sum())
        if not self._continued and nvoiced < self._min_voiced:
            return "too_short"
        if nvoiced >= self._pitch_min and _pitch_share(self._lag[:n][voiced]) > self.cfg.max_pitch_share:
            return "not_speech"
        act = np.flatnonzero(self._active[:n])
        if (len(act) and act[-1] - act[0] + 1 >= self._mod_min
                and _modulation_db(self._db[act[0]:act[-1] + 1], self._frame_rate) < self.cfg.min_modulation_db):
            return "not_speech"
        return None

    def _confirm(self, events: list[Event]) -> None:
        self._confirmed = True
        self._id = self._next_id
        self._next_id += 1
        events.append(UtteranceStarted(self._id, self._time(self._start)))

    def _maybe_confirm(self, events: list[Event]) -> None:
        # Speech spanning modulation_min_ms can be judged now; shorter utterances are judged at their pause.
        if self._nvoiced < self._min_voiced or self._last_active < self._mod_min - 1:
            return
        act = np.flatnonzero(self._active[:self._len])
        if act[-1] - act[0] + 1 >= self._mod_min and self._verdict_of(self._len) is None:
            self._confirm(events)

    def _freeze(self, extra: int = 0) -> None:
        """Fix the utterance as it would end now (+ `extra` samples of a partial frame) and judge it."""
        self._frozen = self._audio[:self._len * self._f + extra].copy()
        self._frozen.flags.writeable = False
        self._frozen_end = self._time(self._start + self._last_active + 1)
        self._verdict = self._verdict_of(self._len)

    def _do_pause(self, events: list[Event]) -> None:
        self._paused = True
        self._freeze()
        if self._verdict is None:
            if not self._confirmed:
                self._confirm(events)
            n = self._len
            shape = prosody(self._db[:n], self._lag[:n], self._voiced[:n], self._active[:n], self.cfg.frame_ms,
                            self.sample_rate)
            events.append(SpeechPaused(self._id, self._frozen_end, self._frozen, shape))
            self._paused_sent = True

    def _close(self, reason: str, events: list[Event]) -> None:
        if self._verdict is None:
            if not self._confirmed:
                self._confirm(events)
            start = self._time(self._start)
            end = start + len(self._frozen) / self.sample_rate
            events.append(UtteranceEnded(self._id, self._frozen, start, end, self._frozen_end, reason))
        elif self._confirmed:
            events.append(UtteranceDropped(self._id, self._verdict))
        self._min_start = self._start + self._len
        self._close_state()

    def _max_length(self, events: list[Event]) -> None:
        if self._paused:
            # Silence is under way: end at the pause, which is what was decoded speculatively.
            self._close("max_length", events)
            return
        n, f = self._len, self._f
        lo = max(1, n - self._cut)
        power = 10.0 ** (self._db[lo - 1:n] / 10.0)
        cut = lo + int(np.argmin(power[:-1] + power[1:]))  # the quietest frame boundary (two frames around it)
        if self._confirmed:
            act = np.flatnonzero(self._active[:cut])
            speech_end = self._time(self._start + (int(act[-1]) + 1 if len(act) else 0))
            audio = self._audio[:cut * f].copy()
            audio.flags.writeable = False
            start = self._time(self._start)
            events.append(UtteranceEnded(self._id, audio, start, self._time(self._start + cut), speech_end,
                                         "max_length"))
        # The rest opens the next utterance: the same speech, so it needs no new evidence.
        rest = n - cut
        self._audio[:rest * f] = self._audio[cut * f:n * f]
        for arr in (self._db, self._active, self._voiced, self._lag):
            arr[:rest] = arr[cut:n]
        confirmed = self._confirmed
        self._start += cut
        self._len = rest
        self._last_active = max(self._last_active - cut, -1)
        self._nvoiced = int(self._voiced[:rest].sum())
        self._confirmed = False
        if confirmed:
            self._continued = True
            self._confirm(events)

    def _time(self, frame: int) -> float:
        return frame * self._f / self.sample_rate
