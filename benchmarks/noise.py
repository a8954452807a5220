"""No text on sound that is not speech: minutes of noise, hum, tones and synthesized music streamed through
`tympan serve` (as fast as it takes them), counting the utterances the segmenter let through and the finals
that came back with text.

    .venv/bin/python benchmarks/noise.py [--bundle DIR] [--minutes 10] [--seeds 1,2,3]

The sound is `tests/noise.py`'s: white, pink and brown noise, mains hum, tones, dial tones, sweeps, melodies
and chords, alone and under noise, 3-20 s pieces at -40 to -12 dBFS with gaps of silence.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from common import BenchmarkError, run_main


def main(argv: list[str] | None = None) -> int:
    from daemon_harness import DaemonProcess, v1_finals
    from noise import mixed_noise_and_music

    from tympan.daemon.cli import default_bundle

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle (default: the default bundle)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seeds", default="1,2,3")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise BenchmarkError(f"--seeds: whole numbers separated by commas, got {args.seeds!r}") from None
    bundle = args.bundle or default_bundle()
    print(f"{bundle.name}: {args.minutes:g} minutes a seed\n")
    print("| seed | utterances | finals with text | readings refused |\n|---|---|---|---|")
    with DaemonProcess(bundle, Path(tempfile.mkdtemp(prefix="tympan-bench-noise-")), "[server]\nthreads = 2\n") as d:
        for seed in seeds:
            audio = mixed_noise_and_music(args.minutes * 60, 16000, seed=seed)
            before = d.metrics()
            finals = asyncio.run(v1_finals(d, audio, {"task": "asr"}, chunk_s=1.0))
            refused = d.metrics().get("tympan_finals_refused_total", 0) - before.get("tympan_finals_refused_total", 0)
            texts = [f["text"] for f in finals if f["text"]]
            print(f"| {seed} | {len(finals)} | {len(texts)} {texts if texts else ''} | {refused:.0f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
