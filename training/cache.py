"""On-disk cache of frozen encoder outputs, keyed by the audio's hash, the encoder and its layer.

The encoder never changes during training, so each audio file is encoded once; training
from the cache gives the same loss as training from audio. Entries are written atomically
(temporary file, then rename), so an interrupted fill resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tympan.audio import AudioError, load_audio
from tympan.checksum import sha256_file
from tympan.manifest import Example
from tympan.training.model.encoder import SpeechEncoder, encode_audio


def audio_hash(path: Path) -> str:
    return sha256_file(path)[:32]


def audio_seconds(path: Path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot read audio: {e}") from None
    return info.frames / info.samplerate


class EncoderCache:
    def __init__(self, root: Path, encoder: SpeechEncoder, dtype: str = "float32") -> None:
        self.encoder = encoder
        self.dir = root / "encoder" / f"{encoder.kind}-{encoder.fingerprint()}-{dtype}"
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self._keys: dict[Path, str] = {}

    def _path(self, audio: Path) -> Path:
        key = self._keys.get(audio)
        if key is None:
            key = self._keys[audio] = audio_hash(audio)
        return self.dir / key[:2] / f"{key}.npy"

    def has(self, example: Example) -> bool:
        assert example.audio is not None
        return self._path(example.audio).is_file()

    def get(self, example: Example) -> torch.Tensor:
        assert example.audio is not None
        path = self._path(example.audio)
        return torch.from_numpy(np.load(path).astype(np.float32))

    def put(self, example: Example, hidden: torch.Tensor) -> None:
        assert example.audio is not None
        path = self._path(example.audio)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, hidden.numpy().astype(self.dtype))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def fill(
        self,
        examples: Sequence[Example],
        device: torch.device,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Encode every example not yet cached (sorted by length to pad little); returns how many."""
        todo = {e.audio: e for e in examples if e.audio is not None and not self.has(e)}
        items = sorted(todo.values(), key=lambda e: audio_seconds(e.audio))  # type: ignore[arg-type]
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            audios = []
            for e in chunk:
                assert e.audio is not None
                audio = load_audio(e.audio, self.encoder.sample_rate)
                self.encoder.check_duration(len(audio), f"{e.id} ({e.audio})")
                audios.append(audio)
            hidden = encode_audio(self.encoder, audios, device)
            for e, h in zip(chunk, hidden, strict=True):
                self.put(e, h)
            if progress:
                progress(len(chunk))
        return len(items)
