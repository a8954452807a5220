"""The speech model a bundle serves: audio + instruction -> answer tokens.

encoder (ONNX) -> speech embeddings; prompt tokens embedded around them; the runtime's greedy decode loop.
With a second pass of hearing (the bundle's `hearing`, tympan/runtime/whisper.py), Whisper's decoder writes a
final's words: ASR serves them, and the other tasks give them to the bundle's text LLM as text in its chat template
(tympan/runtime/text_llm.py), or, in a bundle without one, to the speech LLM as the embedding rows of their tokens
(the text bridge), in the spoken form the LLM learnt from the CTC bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from tympan.runtime.bundle import Bundle, load_bundle
from tympan.runtime.bundle_manifest import BundleError
from tympan.runtime.ctc_lm import LmError, LmSettings, NgramLM, beam_search
from tympan.runtime.decode import DEFAULT_SETTINGS, Decoded, DecodeSettings, StepLLM, Stop, greedy_decode
from tympan.runtime.grounding import held
from tympan.runtime.llm import load_llm
from tympan.runtime.onnx_encoder import Encoded, OnnxEncoder
from tympan.runtime.prompt import Prompts
from tympan.runtime.text_llm import TextLLM
from tympan.runtime.whisper import Heard, HearingError, HearingSettings, WhisperHearing
from tympan.spoken import ctc_target


class SpeechModel:
    def __init__(self, bundle: Bundle, threads: int | None = None, encoder_file: str | None = None) -> None:
        self.bundle = bundle
        self.encoder = OnnxEncoder(bundle, threads, file=encoder_file)
        self.prompts = Prompts(bundle)
        self.threads = threads
        self._llm: StepLLM | None = None
        self.lm = self._load_lm()
        self.hearing = self._load_hearing(threads)
        self.text_llm = self._load_text_llm(threads)
        if self.text_llm is None:
            self._llm = self._load_speech_llm()
        # With a text LLM and a second pass, the speech LLM answers only what a deployment asks of it alone (LLM
        # partials): it is loaded on first use, and its memory is not spent otherwise.

    @property
    def llm(self) -> StepLLM:
        """The speech LLM (it reads the encoder's embeddings)."""
        if self._llm is None:
            self._llm = self._load_speech_llm()
        return self._llm

    def _load_speech_llm(self) -> StepLLM:
        llm = load_llm(self.bundle, self.threads)
        if llm.hidden_size != self.encoder.embedding_dim:
            raise BundleError(f"{self.bundle.path}: encoder gives {self.encoder.embedding_dim}-dim embeddings, "
                             f"the LLM takes {llm.hidden_size}")
        return llm

    def _load_text_llm(self, threads: int | None) -> TextLLM | None:
        entry = self.bundle.manifest.text_llm
        if entry is None:
            return None
        if self.hearing is None:
            raise BundleError(f"{self.bundle.path}: the bundle has a text LLM but no second pass of hearing to give "
                              "it text")
        return TextLLM(self.bundle.path / entry.dir, entry, threads)

    def _load_hearing(self, threads: int | None) -> WhisperHearing | None:
        entry = self.bundle.manifest.hearing
        if entry is None:
            return None
        if entry.kind != "whisper":
            raise BundleError(f"{self.bundle.path}: hearing.kind {entry.kind!r}; this tympan knows \"whisper\"")
        try:
            return WhisperHearing(self.bundle.path / entry.dir, HearingSettings(window_s=entry.window_s,
                                                                               pad_s=entry.pad_s), threads)
        except HearingError as e:
            raise BundleError(str(e)) from None

    def _load_lm(self) -> NgramLM | None:
        entry = self.bundle.manifest.lm
        if entry is None:
            return None
        if not self.encoder.gives_ctc_frames:
            raise BundleError(f"{self.bundle.path}: the bundle has an n-gram LM ({entry.file}) but its encoder "
                              "graph gives no CTC frames to read it with")
        try:
            lm = NgramLM.load(self.bundle.file(entry.file))
        except LmError as e:
            raise BundleError(str(e)) from None
        return lm.with_settings(LmSettings(weight=entry.weight, length_bonus=entry.length_bonus, beam=entry.beam))

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> SpeechModel:
        return cls(load_bundle(path), threads)

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def hears(self) -> bool:
        """The encoder graph gives greedy CTC text (a CTC bridge): what was heard, without the LLM."""
        return self.encoder.gives_ctc

    def embed_audio(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.encoder(audios)

    def encode(self, audios: Sequence[np.ndarray]) -> list[Encoded]:
        return self.encoder.encode(audios)

    def heard(self, encoded: Encoded, with_lm: bool = True) -> str:
        """What a CTC bridge heard (spoken form: lower case, numbers in words): the beam search with the bundle's
        n-gram LM where it has one and `with_lm`, else greedy CTC (the daemon's partials: about 11 ms less per
        second of audio, on every re-decode)."""
        if encoded.ctc_ids is None:
            raise BundleError(f"{self.bundle.path}: the encoder graph gives no CTC labels (bridge "
                              f"{self.bundle.manifest.encoder.bridge!r})")
        if with_lm and self.lm is not None and encoded.ctc_frames is not None:
            return self.prompts.decode(beam_search(*encoded.ctc_frames, self.lm)).strip()
        return self.prompts.decode(encoded.ctc_ids).strip()

    def hear(self, audio: np.ndarray, terms: str | None = None, word_times: bool = False) -> Heard:
        """The second pass: Whisper's reading of one utterance (the bundle must have one)."""
        if self.hearing is None:
            raise BundleError(f"{self.bundle.path}: the bundle has no second pass of hearing (hearing.kind \"ctc\")")
        return self.hearing.hear(audio, terms, word_times)

    def text_bridge(self, text: str) -> np.ndarray:
        """What the LLM reads for heard text: the embedding rows of its spoken form's tokens, as the CTC bridge
        hands them (lower case, numbers as words, a leading space); (0, hidden) for no words."""
        words = ctc_target(text)
        ids = self.prompts.tokenizer.encode(" " + words, add_special_tokens=False).ids if words else []
        return self.llm.embed(ids) if ids else np.zeros((0, self.llm.hidden_size), np.float32)

    def inputs(self, speech: np.ndarray, instruction: str) -> np.ndarray:
        before, after = self.prompts.ids(instruction)
        return np.concatenate([self.llm.embed(before), speech.astype(np.float32), self.llm.embed(after)])

    def decode(
        self,
        speech: np.ndarray,
        instruction: str,
        settings: DecodeSettings = DEFAULT_SETTINGS,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_token: Callable[[Sequence[int]], None] | None = None,
    ) -> Decoded:
        """Greedy tokens for speech embeddings and an instruction, under `settings` and the bundle's own limit.

        A CTC bridge that recognised nothing gives no embedding: the answer is empty rather than what
        the LLM would make of the instruction alone (text on silence is what users of speech services
        complain of most)."""
        if speech.shape[0] == 0 and (self.bundle.manifest.encoder.bridge == "ctc" or self.hearing is not None):
            return Decoded([], Stop.NOTHING_HEARD)
        return greedy_decode(self.llm, self.inputs(speech, instruction), self.prompts.stop_ids,
                             settings.capped(self.prompts.max_new_tokens), cancelled=cancelled, on_token=on_token)

    def ground(self, answer: str, encoded: Encoded, settings: DecodeSettings) -> tuple[str, bool]:
        """An ASR answer held to what was heard (runtime/grounding.py): (the text to serve, whether the heard
        words replaced it). The answer as it is without a CTC bridge or with `settings.ground_asr` off."""
        return held(answer, self.heard(encoded) if self.hears else None, settings)

    def read(self, audio: np.ndarray, encoded: Encoded, terms: str | None = None, word_times: bool = False) -> Heard:
        """The second pass's reading of an utterance, checked against the first pass (`encoded`, the same audio).
        Where a CTC bridge heard nothing, Whisper is not asked ("nothing_heard"). Where Whisper doubts (average
        log-probability under the guard's threshold, or no-speech probability over its own) and not one of its
        words is among those the first pass heard, the reading is refused ("unconfirmed"): two recognisers that
        share no word on sound one of them doubts are reading noise ("Thank you." on 20 s of music and noise;
        measured on 30 minutes of it: docs/hearing.md)."""
        if encoded.ctc_ids is not None and not encoded.ctc_ids:
            return Heard("", [], 1.0, 0.0, 0.0, refused="nothing_heard")
        heard = self.hear(audio, terms, word_times)
        assert self.hearing is not None
        guard = self.hearing.settings
        doubts = heard.avg_logprob < guard.logprob_threshold or heard.no_speech_prob > guard.no_speech_threshold
        if heard.refused is None and encoded.ctc_ids is not None and doubts:
            first = set(self.prompts.decode(encoded.ctc_ids).split())
            if not first & set(ctc_target(heard.text).split()):
                return replace(heard, text="", tokens=[], words=(), refused="unconfirmed")
        return heard

    def instruction(self, task: str, tgt_lang: str, question: str | None = None) -> str:
        """The bundle's instruction for a task: the text LLM's where it answers, else the speech LLM's."""
        if self.text_llm is not None and task != "asr":
            return self.text_llm.instruction(task, tgt_lang, question)
        return self.prompts.instruction(task, tgt_lang, question)

    def respond(self, audio: np.ndarray, instruction: str, settings: DecodeSettings = DEFAULT_SETTINGS,
                task: str | None = None, terms: str | None = None) -> str:
        """Audio in, text out, decoded as the daemon decodes (its default limits and loop guard); with `task`
        "asr", held to what was heard as the daemon holds its ASR answers, or, with a second pass of hearing,
        Whisper's words as they are. `instruction`: `instruction()`'s for the task, or the caller's own."""
        (encoded,) = self.encode([audio])
        if self.hearing is not None:
            heard = self.read(audio, encoded, terms)
            if heard.refused is not None:
                return ""
            if task == "asr":
                return heard.text
            if self.text_llm is not None:
                return self.text_llm.decode(self.text_llm.answer(instruction, heard.text, settings).tokens)
            return self.prompts.decode(self.decode(self.text_bridge(heard.text), instruction, settings).tokens)
        answer = self.prompts.decode(self.decode(encoded.embeddings, instruction, settings).tokens)
        return self.ground(answer, encoded, settings)[0] if task == "asr" else answer
