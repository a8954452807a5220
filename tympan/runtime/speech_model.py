"""The speech model a bundle serves: audio + instruction -> answer tokens, streamed.

encoder (ONNX) -> speech embeddings; prompt tokens embedded around them; LLM greedy decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tympan.runtime.bundle import Bundle, BundleError, load_bundle
from tympan.runtime.llm import LLM, load_llm
from tympan.runtime.onnx_encoder import OnnxEncoder
from tympan.runtime.prompt import Prompts


class SpeechModel:
    def __init__(self, bundle: Bundle, threads: int | None = None, encoder_file: str | None = None) -> None:
        self.bundle = bundle
        self.encoder = OnnxEncoder(bundle, threads, file=encoder_file)
        self.prompts = Prompts(bundle)
        self.llm: LLM = load_llm(bundle, threads)
        if self.llm.hidden_size != self.encoder.embedding_dim:
            raise BundleError(f"{bundle.path}: encoder gives {self.encoder.embedding_dim}-dim embeddings, "
                             f"the LLM takes {self.llm.hidden_size}")

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> SpeechModel:
        return cls(load_bundle(path), threads)

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    def embed_audio(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.encoder(audios)

    def inputs(self, speech: np.ndarray, instruction: str) -> np.ndarray:
        before, after = self.prompts.ids(instruction)
        return np.concatenate([self.llm.embed(before), speech.astype(np.float32), self.llm.embed(after)])

    def generate(self, speech: np.ndarray, instruction: str, max_new_tokens: int | None = None) -> Iterator[int]:
        limit = max_new_tokens or self.prompts.max_new_tokens
        yield from self.llm.generate(self.inputs(speech, instruction), limit, self.prompts.stop_ids)

    def respond(self, audio: np.ndarray, instruction: str, max_new_tokens: int | None = None) -> str:
        (speech,) = self.embed_audio([audio])
        return self.prompts.decode(list(self.generate(speech, instruction, max_new_tokens)))
