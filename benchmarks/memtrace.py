"""Where the daemon's memory goes: `tympan` run with tracemalloc on, a snapshot at each SIGUSR2, and the
growth between two snapshots by traceback.

    .venv/bin/python benchmarks/memtrace.py run DIR [--frames 25] -- serve [tympan serve options]
    kill -USR2 PID     # writes DIR/NNN.snapshot and one line of DIR/memory.jsonl
    .venv/bin/python benchmarks/memtrace.py compare DIR/002.snapshot DIR/009.snapshot [--top 15]

`benchmarks/load.py --memtrace DIR` starts its daemon this way, signals it on a schedule and reports the
figures against the session count. None of this is in the daemon: `tympan serve` pays nothing for it.

Each line of memory.jsonl: RSS; what tracemalloc traces (Python objects and numpy buffers, not ONNX
Runtime's own allocations); glibc's heap (bytes in use, free but kept, mmapped); the garbage collector's
counts; the live objects of the daemon's, websockets' and asyncio's types. Python-level growth shows in the
traced total and the snapshot comparison; RSS growing while those stay flat is the native side (ONNX
Runtime's arena, glibc keeping freed memory). `--frames 0` records the figures without tracing (tracing
slows the daemon several-fold).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def glibc_heap() -> dict[str, int] | None:
    """glibc's malloc statistics over all arenas (None off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return {"heap_bytes": m.arena, "in_use_bytes": m.uordblks, "free_bytes": m.fordblks, "mmapped_bytes": m.hblkhd}


# Types whose live count is recorded at each snapshot: the daemon's own, its transport's, asyncio's.
WATCHED = ("tympan.", "websockets.", "asyncio.", "_asyncio.")


class Recorder:
    """Writes a numbered snapshot and a line of figures to `out` each time it is called."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0

    def __call__(self, *_: object) -> None:
        from common import rss_bytes  # here, not at the top: the daemon's imports come after tracing starts

        self.count += 1
        # Read before the snapshot and the object census add their own.
        started, rss, heap = time.monotonic(), rss_bytes(os.getpid()), glibc_heap()
        traced, peak = tracemalloc.get_traced_memory()
        line: dict = {"n": self.count, "time": time.time(), "rss_bytes": rss, "glibc": heap}
        if tracemalloc.is_tracing():
            path = self.out / f"{self.count:03d}.snapshot"
            tracemalloc.take_snapshot().dump(str(path))
            line.update(snapshot=path.name, traced_bytes=traced, traced_peak_bytes=peak,
                        tracemalloc_overhead_bytes=tracemalloc.get_tracemalloc_memory())
        objects = gc.get_objects()
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
        line.update(allocated_blocks=sys.getallocatedblocks(), gc_objects=len(objects), gc_counts=gc.get_count(),
                    gc_stats=gc.get_stats(),
                    objects={k: n for k, n in types.items() if k.startswith(WATCHED)} | dict(types.most_common(10)),
                    seconds=round(time.monotonic() - started, 2))
        del objects
        with open(self.out / "memory.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def run(out: Path, frames: int, argv: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    if frames:
        tracemalloc.start(frames)  # before tympan, numpy and ONNX Runtime are imported
    # A Python-level handler runs on the main thread between bytecodes: the event loop pauses meanwhile.
    signal.signal(signal.SIGUSR2, Recorder(out))
    from tympan.cli import main

    return main(argv)


def growth(before: Path, after: Path, top: int, frames: int = 8) -> str:
    """The `top` tracebacks whose traced memory grew most from `before` to `after`, and the totals."""
    a, b = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    stats = b.compare_to(a, "traceback")
    total_a = sum(s.size for s in a.statistics("filename"))
    total_b = sum(s.size for s in b.statistics("filename"))
    lines = [f"traced {total_a / 2**20:.2f} MiB -> {total_b / 2**20:.2f} MiB "
             f"({(total_b - total_a) / 2**10:+.1f} KiB), {after.name} against {before.name}"]
    for s in stats[:top]:
        lines.append(f"\n{s.size_diff / 2**10:+9.1f} KiB  {s.count_diff:+6d} blocks  (now {s.size / 2**10:.1f} KiB "
                     f"in {s.count} blocks)")
        lines.extend(f"    {frame}" for frame in s.traceback.format(limit=frames, most_recent_first=True))
    return "\n".join(lines)


def read_figures(out: Path) -> list[dict]:
    path = out / "memory.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_figures(out: Path, count: int, timeout: float = 120.0) -> None:
    """Wait until memory.jsonl has `count` lines (a snapshot of a large heap takes seconds)."""
    deadline = time.monotonic() + timeout
    while len(read_figures(out)) < count and time.monotonic() < deadline:
        time.sleep(0.5)


def table(figures: list[dict], sessions: dict[int, float | None]) -> str:
    """The figures of each snapshot as a markdown table; `sessions`: snapshot number -> sessions started by then."""
    mb = 2**20
    lines = ["| snapshot | min | sessions | RSS MB | glibc heap MB | in use MB | free MB | traced MB | gc objects | "
             "full collections | sessions alive |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in figures:
        heap = f["glibc"] or {}
        cells = [f["n"], f"{(f['time'] - figures[0]['time']) / 60:.1f}", sessions.get(f["n"]),
                 f["rss_bytes"] / mb, heap.get("heap_bytes", 0) / mb, heap.get("in_use_bytes", 0) / mb,
                 heap.get("free_bytes", 0) / mb, f["traced_bytes"] / mb if "traced_bytes" in f else None,
                 f["gc_objects"], f["gc_stats"][2]["collections"],
                 sum(n for k, n in f["objects"].items() if k.startswith("tympan.") and k.endswith("Session"))]
        lines.append("| " + " | ".join("-" if c is None else f"{c:.1f}" if isinstance(c, float) else str(c)
                                       for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("run", help="run a tympan command traced; SIGUSR2 writes a snapshot",
                       usage="memtrace.py run DIR [--frames N] -- serve [tympan serve options]")
    s.add_argument("out", type=Path, help="directory for the snapshots and memory.jsonl")
    s.add_argument("--frames", type=int, default=25, help="traceback depth kept per allocation; 0: no tracing, "
                   "figures only (RSS, glibc heap, garbage collector, object counts)")
    c = sub.add_parser("compare", help="the allocation sites that grew most between two snapshots")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--top", type=int, default=15)
    argv = sys.argv[1:] if argv is None else argv
    # What follows `--` is the tympan command line, options included.
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    if args.command == "run":
        return run(args.out, args.frames, argv[split + 1:])
    print(growth(args.before, args.after, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
