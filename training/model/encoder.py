"""Frozen speech encoders behind one interface: SeamlessM4T-v2 (w2v-BERT 2.0) and Whisper.

An encoder turns one waveform into features (numpy, per utterance, so a feature never
depends on what else is in the batch), and a padded batch of features into hidden states
of a chosen layer, computed on the real length of the audio.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.audio import AudioError
from tympan.errors import TympanError
from tympan.features import FeatureExtractor, SeamlessFbank, WhisperLogMel
from tympan.training.model.base_models import PREFIX as PACKAGE_PREFIX
from tympan.training.recipe import EncoderConfig

SAMPLE_RATE = 16000


class EncoderLoadError(TympanError, RuntimeError):
    """Encoder weights could not be found or do not fit the architecture."""


class SpeechEncoder(nn.Module):
    """Interface: `extract_features` (numpy) then `forward(features, lengths)`."""

    kind: str
    sample_rate: int = SAMPLE_RATE
    output_dim: int
    frames_per_second: float

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg

    features: FeatureExtractor

    def extract_features(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at `sample_rate` -> features (time, feature_dim), numpy only
        (tympan.features: the same code computes them on a serving host without torch)."""
        return self.features(audio)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (batch, time, feature_dim), lengths (batch,) -> hidden (batch, time', dim), lengths'."""
        raise NotImplementedError

    def feature_params(self) -> dict[str, Any]:
        """What `tympan.features.feature_extractor` needs to rebuild `extract_features`."""
        return self.features.params

    def fingerprint(self) -> str:
        """Identifies the encoder's outputs: kind, layer, feature params and weights."""
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "layer": self.cfg.layer, "features": self.feature_params()},
                            sort_keys=True).encode())
        if self.cfg.checkpoint:
            h.update(_checkpoint_identity(self.cfg.checkpoint).encode())
        else:
            for name, tensor in sorted(self.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_duration(self, n_samples: int, what: str) -> None:
        seconds = n_samples / self.sample_rate
        if seconds > self.cfg.max_seconds:
            raise AudioError(f"{what}: {seconds:.1f} s of audio exceeds encoder.max_seconds = {self.cfg.max_seconds}")


def _padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _key_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (batch, 1, 1, keys): 0 on real frames, very negative on padding.

    Built here rather than by transformers' mask helpers, whose shortcuts branch on the data
    (no mask when nothing is padded) and would be frozen into an ONNX trace.
    """
    return (~valid)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def _checkpoint_identity(checkpoint: str) -> str:
    """Cheap identity of a checkpoint: where it resolves to, plus size and mtime of its files."""
    path = _local_dir(checkpoint)
    stats = [
        f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
        for p in sorted(path.glob("*"))
        if p.suffix in (".safetensors", ".bin", ".json")
    ]
    return str(path.resolve()) + "|" + ",".join(stats)


def _pretrained_config(config_class: Any, checkpoint: str) -> Any:
    try:
        # Never download: a model id must already be in the local Hugging Face cache.
        return config_class.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError) as e:
        raise EncoderLoadError(f"cannot load encoder.checkpoint = {checkpoint!r}: {e}") from None


def _local_dir(checkpoint: str) -> Path:
    """A local directory as is; a model id resolved to its snapshot in the local HF cache."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    from transformers.utils import cached_file

    try:
        config = cached_file(checkpoint, "config.json", local_files_only=True)
    except OSError as e:
        raise EncoderLoadError(f"cannot load encoder.checkpoint = {checkpoint!r}: {e}") from None
    if not config:
        raise EncoderLoadError(f"encoder.checkpoint = {checkpoint!r}: no config.json in the local HF cache")
    return Path(config).parent


def _weight_files(checkpoint: str) -> list[Path]:
    """The safetensors files of a local directory or of a model id in the local HF cache."""
    path = _local_dir(checkpoint)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / n for n in names]
    else:
        files = sorted(path.glob("*.safetensors"))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        what = f"{missing[0].name} is missing" if missing else "no *.safetensors files"
        raise EncoderLoadError(f"encoder.checkpoint = {checkpoint!r}: {what} in {path}")
    return files


def load_submodule_weights(module: nn.Module, checkpoint: str, prefixes: tuple[str, ...]) -> None:
    """Load `module`'s weights from a full model checkpoint, stripping the first matching key prefix.

    Strict: every weight of `module` must be found (a silent partial load leaves random weights).
    """
    from safetensors import safe_open

    files = _weight_files(checkpoint)
    state: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key.startswith(prefix):
                        state[key[len(prefix):]] = f.get_tensor(key)
        if state:
            break
    if not state:
        raise EncoderLoadError(f"{checkpoint}: no weights under any of the prefixes {list(prefixes)}")
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise EncoderLoadError(
            f"{checkpoint}: {len(missing)} encoder weights missing from the checkpoint, e.g. {missing[:3]}"
        )
    unexpected = sorted(set(state) - expected)
    for key in unexpected:
        del state[key]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EncoderLoadError(f"{checkpoint}: encoder weights do not fit the architecture: {e}") from None


class SeamlessEncoder(SpeechEncoder):
    """SeamlessM4T-v2's w2v-BERT 2.0 Conformer, output of a chosen layer (before the length adaptor).

    80-dim fbank at 100 Hz, two frames stacked (160-dim) -> 50 Hz hidden states.
    """

    kind = "seamless_m4t_v2"
    frames_per_second = 50.0

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import SeamlessM4Tv2Config
        from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

        if cfg.checkpoint:
            config = _pretrained_config(SeamlessM4Tv2Config, cfg.checkpoint)
        else:
            r = cfg.random
            assert r is not None
            config = SeamlessM4Tv2Config(
                hidden_size=r.hidden_size,
                speech_encoder_layers=r.layers,
                speech_encoder_attention_heads=r.heads,
                speech_encoder_intermediate_size=r.ffn_size,
                conv_depthwise_kernel_size=31 if r.hidden_size >= 256 else 15,
                vocab_size=256,
                t2u_vocab_size=256,
            )
        config._attn_implementation = "sdpa"
        encoder = SeamlessM4Tv2SpeechEncoder(config)
        if cfg.checkpoint:
            # The full checkpoint keeps these weights under `speech_encoder.`; from_pretrained
            # on the sub-model would not strip it and leave them random.
            load_submodule_weights(encoder, cfg.checkpoint, ("speech_encoder.", ""))
        total = config.speech_encoder_layers
        layer = cfg.layer or total
        if layer > total:
            raise EncoderLoadError(f"encoder.layer = {layer} but the encoder has {total} layers")
        # Layers above the chosen one, the intermediate FFN and the adaptor are never used.
        encoder.encoder.layers = encoder.encoder.layers[:layer]
        self.final_norm = layer == total
        self.feature_projection = encoder.feature_projection
        self.conformer = encoder.encoder
        self.output_dim = config.hidden_size
        self.features = SeamlessFbank(num_mel_bins=80, sample_rate=SAMPLE_RATE, stride=2)
        self.requires_grad_(False)
        self.eval()

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _padding_mask(lengths, features.shape[1])
        hidden = self.feature_projection(features)
        hidden = hidden.masked_fill(~mask[..., None], 0.0)
        attn_mask = _key_mask(mask, hidden.dtype)
        hidden = self.conformer.dropout(hidden)
        for layer in self.conformer.layers:
            hidden = layer(hidden, attention_mask=attn_mask, conv_attention_mask=mask)
        if self.final_norm:
            hidden = self.conformer.layer_norm(hidden)
        return hidden, lengths



class WhisperEncoder(SpeechEncoder):
    """Whisper's encoder fed with the real length of the audio (positional table sliced), not 30 s."""

    kind = "whisper"
    frames_per_second = 50.0

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

        if cfg.checkpoint:
            config = _pretrained_config(WhisperConfig, cfg.checkpoint)
        else:
            r = cfg.random
            assert r is not None
            config = WhisperConfig(
                d_model=r.hidden_size,
                encoder_layers=r.layers,
                encoder_attention_heads=r.heads,
                encoder_ffn_dim=r.ffn_size,
                decoder_layers=1,
                decoder_attention_heads=r.heads,
                decoder_ffn_dim=r.ffn_size,
                num_mel_bins=80,
                vocab_size=256,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=3,
                suppress_tokens=[],
                begin_suppress_tokens=[],
            )
        config._attn_implementation = "sdpa"
        encoder = HFWhisperEncoder(config)
        if cfg.checkpoint:
            load_submodule_weights(encoder, cfg.checkpoint, ("model.encoder.", "encoder.", ""))
        total = config.encoder_layers
        layer = cfg.layer or total
        if layer > total:
            raise EncoderLoadError(f"encoder.layer = {layer} but the encoder has {total} layers")
        encoder.layers = encoder.layers[:layer]
        self.final_norm = layer == total
        self.whisper = encoder
        self.output_dim = config.d_model
        self.max_frames = config.max_source_positions
        self.features = WhisperLogMel(num_mel_bins=config.num_mel_bins, sample_rate=SAMPLE_RATE)
        self.requires_grad_(False)
        self.eval()

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths - 1) // 2 + 1

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.whisper
        x = nn.functional.gelu(enc.conv1(features.transpose(1, 2)))
        # conv1 is not zero on padding (gelu(bias)); conv2 would read it into the last real
        # frame of odd-length inputs, making outputs depend on the rest of the batch.
        x = x * _padding_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        out_lengths = self.output_lengths(lengths)
        if not torch.jit.is_tracing() and x.shape[1] > self.max_frames:
            raise ValueError(f"{x.shape[1]} encoder frames exceed Whisper's {self.max_frames} positions (30 s)")
        hidden = x + enc.embed_positions.weight[: x.shape[1]]
        attn_mask = _key_mask(_padding_mask(out_lengths, hidden.shape[1]), hidden.dtype)
        for layer in enc.layers:
            hidden = layer(hidden, attn_mask)
        if self.final_norm:
            hidden = enc.layer_norm(hidden)
        return hidden, out_lengths



def build_encoder(cfg: EncoderConfig, seed: int = 0) -> SpeechEncoder:
    """The configured encoder, frozen and in eval mode. Random weights are seeded."""
    if cfg.checkpoint.startswith(PACKAGE_PREFIX):
        from tympan.training.model.base_models import resolve

        cfg = replace(cfg, checkpoint=resolve(cfg.checkpoint))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if cfg.kind == "seamless_m4t_v2":
            return SeamlessEncoder(cfg)
        if cfg.kind == "whisper":
            return WhisperEncoder(cfg)
    raise ValueError(f"unknown encoder kind {cfg.kind!r}")


def encode_audio(encoder: SpeechEncoder, audios: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Encode waveforms as one padded batch; returns each one's hidden states (T_i, D) on CPU."""
    feats = [encoder.extract_features(a) for a in audios]
    lengths = torch.tensor([f.shape[0] for f in feats])
    batch = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        batch[i, : f.shape[0]] = torch.from_numpy(f)
    with torch.no_grad():
        hidden, out_lengths = encoder(batch.to(device), lengths.to(device))
    return [hidden[i, : int(n)].float().cpu() for i, n in enumerate(out_lengths)]
