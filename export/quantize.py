"""int8 dynamic quantization of the ONNX encoder, with a report a user can decide on."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): Levenshtein distance over whitespace-separated words."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


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
    same = 0
    errors = {"fp32": [0, 0], "int8": [0, 0]}
    for audio, instruction, reference in items:
        a = respond(fp32_path.name, audio, instruction)
        b = respond(int8_path.name, audio, instruction)
        same += a == b
        for key, hyp in (("fp32", a), ("int8", b)):
            e, n = word_errors(reference, hyp)
            errors[key][0] += e
            errors[key][1] += n
    report["utterances"] = len(items)
    report["identical_outputs"] = same
    report["word_error_rate"] = {k: round(100 * e / max(1, n), 2) for k, (e, n) in errors.items()}
    return report
