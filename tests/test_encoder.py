from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.training.model.encoder import EncoderLoadError, build_encoder
from tympan.training.recipe import EncoderConfig, RandomEncoderConfig

RANDOM = RandomEncoderConfig(hidden_size=32, layers=3, heads=2, ffn_size=64)


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 180 * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.mark.parametrize("seconds", [1.0, 1.01])  # even and odd numbers of feature frames
@pytest.mark.parametrize("kind", ["whisper", "seamless_m4t_v2"])
def test_both_encoder_kinds_encode_real_lengths_independently_of_batch(kind: str, seconds: float) -> None:
    enc = build_encoder(EncoderConfig(kind=kind, random=RANDOM), seed=0)
    short, long = _speechlike(seconds, 0), _speechlike(2.3, 1)
    feats = [enc.extract_features(a) for a in (short, long)]
    lengths = torch.tensor([f.shape[0] for f in feats])
    batch = torch.zeros(2, int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        batch[i, : len(f)] = torch.from_numpy(f)
    with torch.no_grad():
        hidden, out_lengths = enc(batch, lengths)
        alone, alone_len = enc(batch[:1, : len(feats[0])], lengths[:1])
    assert hidden.shape[-1] == enc.output_dim == 32
    # 50 Hz outputs for both kinds, computed on the real length (no 30 s window).
    assert abs(int(out_lengths[1]) - 2.3 * enc.frames_per_second) <= 2
    assert int(alone_len[0]) == int(out_lengths[0])
    # Padding in the batch does not change the short utterance's states.
    torch.testing.assert_close(hidden[0, : int(out_lengths[0])], alone[0], atol=1e-5, rtol=1e-4)


def test_whisper_real_length_path_matches_transformers_on_a_full_window() -> None:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HF

    enc = build_encoder(EncoderConfig(kind="whisper", random=RANDOM), seed=0)
    reference = HF(enc.whisper.config).eval()
    reference.load_state_dict(enc.whisper.state_dict(), strict=True)
    feats = torch.from_numpy(enc.extract_features(_speechlike(30.0, 2)).T[None].copy())
    with torch.no_grad():
        ours, n = enc(feats.transpose(1, 2), torch.tensor([feats.shape[-1]]))
        theirs = reference(feats).last_hidden_state
    assert int(n[0]) == 1500
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_seamless_path_matches_transformers_speech_encoder_stack() -> None:
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

    enc = build_encoder(EncoderConfig(kind="seamless_m4t_v2", random=RANDOM), seed=0)
    reference = SeamlessM4Tv2SpeechEncoder(enc.conformer.config).eval()
    reference.feature_projection.load_state_dict(enc.feature_projection.state_dict())
    reference.encoder.load_state_dict(enc.conformer.state_dict())
    x = torch.randn(2, 60, 160, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([60, 41])
    mask = (torch.arange(60)[None] < lengths[:, None]).long()
    with torch.no_grad():
        ours, _ = enc(x, lengths)
        theirs = reference.encoder(reference.feature_projection(x), attention_mask=mask)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[i, :n], theirs[i, :n], atol=1e-5, rtol=1e-4)


def test_layer_selection_truncates_the_stack() -> None:
    enc = build_encoder(EncoderConfig(kind="seamless_m4t_v2", layer=2, random=RANDOM), seed=0)
    assert len(enc.conformer.layers) == 2 and not enc.final_norm
    with pytest.raises(EncoderLoadError, match=r"encoder\.layer = 5 but the encoder has 3 layers"):
        build_encoder(EncoderConfig(kind="seamless_m4t_v2", layer=5, random=RANDOM), seed=0)


def _tiny_seamless_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint laid out like facebook/seamless-m4t-v2-large: the speech encoder's weights
    under `speech_encoder.` beside other sub-models' weights, split over two shards."""
    from safetensors.torch import save_file
    from transformers import SeamlessM4Tv2Config
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

    torch.manual_seed(3)
    config = SeamlessM4Tv2Config(hidden_size=32, speech_encoder_layers=2, speech_encoder_attention_heads=2,
                                 speech_encoder_intermediate_size=64, conv_depthwise_kernel_size=15,
                                 vocab_size=128, t2u_vocab_size=64)
    speech = SeamlessM4Tv2SpeechEncoder(config)
    out = tmp_path / "seamless"
    config.save_pretrained(str(out))
    state = {f"speech_encoder.{k}": v.contiguous() for k, v in speech.state_dict().items()}
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]} | {"text_decoder.embed.weight": torch.zeros(4, 2)},
              str(out / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({k: state[k] for k in keys[half:]}, str(out / "model-00002-of-00002.safetensors"),
              metadata={"format": "pt"})
    return out, speech.state_dict()


def test_seamless_weights_load_from_a_full_checkpoint_with_the_prefix_stripped(tmp_path: Path) -> None:
    ckpt, reference = _tiny_seamless_checkpoint(tmp_path)
    enc = build_encoder(EncoderConfig(kind="seamless_m4t_v2", checkpoint=str(ckpt)), seed=99)
    ours = {**{f"feature_projection.{k}": v for k, v in enc.feature_projection.state_dict().items()},
            **{f"encoder.{k}": v for k, v in enc.conformer.state_dict().items()}}
    assert ours, "nothing loaded"
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], atol=0, rtol=0, msg=key)


def test_a_checkpoint_missing_encoder_weights_is_an_error_not_random_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    ckpt, _ = _tiny_seamless_checkpoint(tmp_path)
    for file in ckpt.glob("*.safetensors"):
        state = load_file(str(file))
        kept = {k: v for k, v in state.items() if not k.startswith("speech_encoder.encoder.layers.1.")}
        save_file(kept, str(file), metadata={"format": "pt"})
    with pytest.raises(EncoderLoadError, match=r"encoder weights missing from the checkpoint"):
        build_encoder(EncoderConfig(kind="seamless_m4t_v2", checkpoint=str(ckpt)), seed=0)
