"""tympan.features against transformers' extractors (the reference), params round trip, input checks."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from tympan.features import SeamlessFbank, WhisperLogMel, feature_extractor

SR = 16000
LENGTHS_S = [0.37, 1.0, 1.01, 2.345, 7.0]
SIGNALS = ["noise", "chirp", "quiet"]


def make_signal(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    n = round(seconds * SR)
    rng = np.random.default_rng(seed)
    if kind == "noise":
        x = 0.3 * rng.standard_normal(n)
    elif kind == "chirp":  # 100 Hz sweeping up ~4 kHz per second: energy moves across all mel bins
        t = np.arange(n) / SR
        x = 0.5 * np.sin(2 * np.pi * (100 * t + 2000 * t * t))
    elif kind == "quiet":  # near-silence: exercises the log floors and Whisper's 8-decade clamp
        x = 1e-4 * rng.standard_normal(n)
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from transformers import SeamlessM4TFeatureExtractor, WhisperFeatureExtractor
    from transformers.models.whisper import feature_extraction_whisper

    whisper = {n: WhisperFeatureExtractor(feature_size=n, sampling_rate=SR) for n in (80, 128)}
    seamless = SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=SR, stride=2)

    def whisper_ref(audio: np.ndarray, n_mels: int = 80, numpy_path: bool = True) -> np.ndarray:
        # With torch installed transformers takes its torch.stft path; the numpy path is the spec.
        ctx = (mock.patch.object(feature_extraction_whisper, "is_torch_available", lambda: False)
               if numpy_path else contextlib.nullcontext())
        with ctx:
            out = whisper[n_mels](audio, sampling_rate=SR, padding="longest", return_tensors="np")
        return out["input_features"][0].T

    def seamless_ref(audio: np.ndarray, extractor=seamless) -> np.ndarray:
        return extractor(audio, sampling_rate=SR, return_tensors="np")["input_features"][0]

    return {"whisper": whisper_ref, "seamless": seamless_ref, "seamless_cls": SeamlessM4TFeatureExtractor}


# --------------------------------------------------------------------------- agreement with transformers


@pytest.mark.parametrize("seconds", LENGTHS_S)
@pytest.mark.parametrize("kind", SIGNALS)
def test_whisper_matches_transformers(hf, kind, seconds):
    audio = make_signal(kind, seconds)
    ours = WhisperLogMel()(audio)
    ref = hf["whisper"](audio)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.shape == ref.shape == (len(audio) // 160, 80)
    # Bit-exact in practice; the margin only allows for a different FFT/BLAS build.
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("kind", SIGNALS)
def test_whisper_close_to_transformers_torch_path(hf, kind):
    # What a training host with torch computes: float32 torch.stft, so only close, not equal.
    audio = make_signal(kind, 2.345)
    ref = hf["whisper"](audio, numpy_path=False)
    assert np.abs(WhisperLogMel()(audio) - ref).max() <= 1e-4


@pytest.mark.parametrize("seconds", [0.37, 2.345])
def test_whisper_128_mels(hf, seconds):
    audio = make_signal("chirp", seconds)
    ours = WhisperLogMel(num_mel_bins=128)(audio)
    ref = hf["whisper"](audio, n_mels=128)
    assert ours.shape == ref.shape == (len(audio) // 160, 128)
    assert np.abs(ours - ref).max() <= 1e-5


def test_whisper_truncates_at_30_s_like_transformers(hf):
    audio = make_signal("noise", 30.5)
    ours = WhisperLogMel()(audio)
    assert ours.shape == (3000, 80)
    assert np.abs(ours - hf["whisper"](audio)).max() <= 1e-5


def test_whisper_shorter_than_window(hf):
    # 170 samples < the 200-sample reflect pad: numpy reflects repeatedly (torch.stft would refuse).
    audio = make_signal("noise", 170 / SR)
    ours = WhisperLogMel()(audio)
    assert ours.shape == (1, 80)
    assert np.abs(ours - hf["whisper"](audio)).max() <= 1e-5


@pytest.mark.parametrize("seconds", LENGTHS_S)
@pytest.mark.parametrize("kind", SIGNALS)
def test_seamless_matches_transformers(hf, kind, seconds):
    audio = make_signal(kind, seconds)
    ours = SeamlessFbank()(audio)
    ref = hf["seamless"](audio)
    fbank_frames = 1 + (len(audio) - 400) // 160
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == ((fbank_frames + 1) // 2, 160)
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize(("stride", "n_mels", "samples"), [(1, 80, 5920), (3, 40, 16160), (4, 80, 720)])
def test_seamless_other_strides(hf, stride, n_mels, samples):
    ref_extractor = hf["seamless_cls"](feature_size=n_mels, num_mel_bins=n_mels, sampling_rate=SR, stride=stride)
    audio = make_signal("chirp", samples / SR)
    ours_extractor = SeamlessFbank(num_mel_bins=n_mels, stride=stride)
    ours = ours_extractor(audio)
    ref = hf["seamless"](audio, ref_extractor)
    assert ours.shape == ref.shape == (ours_extractor.num_frames(samples), n_mels * stride)
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_seamless_shortest_accepted_audio(hf):
    extractor = SeamlessFbank()
    audio = make_signal("noise", extractor.min_samples / SR)
    ours = extractor(audio)
    assert ours.shape == (1, 160)
    assert np.abs(ours - hf["seamless"](audio)).max() <= 1e-5
    with pytest.raises(ValueError, match="too short"):
        extractor(audio[:-1])  # one fbank frame: the reference's ddof=1 variance is NaN


def test_float64_and_list_input_same_as_float32():
    audio = make_signal("chirp", 0.5)
    for extractor in (WhisperLogMel(), SeamlessFbank()):
        expected = extractor(audio)
        np.testing.assert_array_equal(extractor(audio.astype(np.float64)), expected)
        np.testing.assert_array_equal(extractor(audio.tolist()), expected)


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "extractor",
    [WhisperLogMel(), WhisperLogMel(num_mel_bins=128), SeamlessFbank(), SeamlessFbank(num_mel_bins=40, stride=3)],
    ids=repr,
)
def test_params_round_trip(extractor):
    params = json.loads(json.dumps(extractor.params))
    assert params["type"] in ("whisper_log_mel", "seamless_fbank") and params["sample_rate"] == SR
    rebuilt = feature_extractor(params)
    assert type(rebuilt) is type(extractor) and rebuilt.params == extractor.params
    audio = make_signal("noise", 0.3, seed=1)
    np.testing.assert_array_equal(rebuilt(audio), extractor(audio))


def test_params_lists_every_constructor_argument():
    assert WhisperLogMel().params == {"type": "whisper_log_mel", "num_mel_bins": 80, "sample_rate": 16000,
                                      "n_fft": 400, "hop_length": 160}
    assert SeamlessFbank().params == {"type": "seamless_fbank", "num_mel_bins": 80, "sample_rate": 16000,
                                      "stride": 2}
    # Missing arguments take the defaults.
    assert feature_extractor({"type": "seamless_fbank"}).params == SeamlessFbank().params


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"type": "mfcc"}, "type"),
        ({"num_mel_bins": 80}, "type"),
        ({"type": "whisper_log_mel", "num_mel_bins": 0}, "num_mel_bins"),
        ({"type": "whisper_log_mel", "num_mel_bins": "80"}, "num_mel_bins"),
        ({"type": "whisper_log_mel", "n_fft": 1.5}, "n_fft"),
        ({"type": "whisper_log_mel", "hop_length": True}, "hop_length"),
        ({"type": "whisper_log_mel", "sample_rate": 8000}, "sample_rate"),
        ({"type": "seamless_fbank", "stride": -2}, "stride"),
        ({"type": "seamless_fbank", "n_fft": 400}, "n_fft"),
    ],
)
def test_bad_params_name_the_key(params, key):
    with pytest.raises(ValueError, match=key):
        feature_extractor(params)


def test_params_must_be_a_dict():
    with pytest.raises(ValueError, match="dict"):
        feature_extractor([("type", "seamless_fbank")])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bad audio


@pytest.mark.parametrize("extractor", [WhisperLogMel(), SeamlessFbank()], ids=repr)
@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 16000), np.float32), "1-D"),
        (np.zeros((16000, 1), np.float32), "1-D"),
        (np.float32(0.5), "1-D"),
        (np.r_[np.zeros(8000), np.nan, np.zeros(8000)].astype(np.float32), "non-finite"),
        (np.r_[np.zeros(8000), np.inf].astype(np.float32), "non-finite"),
        (np.zeros(16000, np.int16), "floating point"),
        (np.zeros(100, np.float32), "too short"),
    ],
    ids=["empty", "stereo", "column", "scalar", "nan", "inf", "int16", "short"],
)
def test_bad_audio_is_rejected(extractor, audio, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio)


# --------------------------------------------------------------------------- serving host


def test_import_does_not_pull_torch_or_transformers():
    code = ("import sys, tympan.features; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
