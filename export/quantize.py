"""int8 dynamic quantization of the ONNX encoder, with a report a user can decide on."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.scoring import wer


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def comparison_report(
    fp32_path: Path,
    int8_path: Path,
    encode: Callable[[str, np.ndarray], np.ndarray],
    respond: Callable[[str, np.ndarray, str], str],
    items: Sequence[tuple[np.ndarray, str, str]],
    sample_rate: int,
) -> dict[str, Any]:
    """Size, latency on 5 s of audio and output agreement, fp32 against int8.

    `encode(file, audio)` runs one encoder file; `respond(file, audio, instruction)` decodes
    with it; `items` are (audio, instruction, reference answer).
    """
    five_seconds = np.random.default_rng(0).normal(0, 0.1, 5 * sample_rate).astype(np.float32)
    report: dict[str, Any] = {
        "size_bytes": {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size},
        "latency_ms_5s": {name: round(median_ms(lambda n=name: encode(n, five_seconds)), 2)
                          for name in (fp32_path.name, int8_path.name)},
    }
    references = [reference for _, _, reference in items]
    hypotheses = {key: [respond(path.name, audio, instruction) for audio, instruction, _ in items]
                  for key, path in (("fp32", fp32_path), ("int8", int8_path))}
    report["utterances"] = len(items)
    report["identical_outputs"] = sum(a == b for a, b in zip(hypotheses["fp32"], hypotheses["int8"], strict=True))
    # Over the words as written (no normalisation): the two encoders are compared, not scored for a task.
    report["word_error_rate"] = {key: round(wer(references, hyps, normalize=None), 2)
                                 for key, hyps in hypotheses.items()}
    return report
