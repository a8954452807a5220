"""Smoke tests of the load/soak and peer benchmark scripts: each runs for seconds with tiny settings, as a
real process against a real daemon, and its report must hold sane figures. The scripts' real runs are minutes
long and are not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bundle(tympan_home: Path) -> Path:
    from tympan.daemon.cli import default_bundle

    return default_bundle()


def script(name: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_load_reports_latency_rss_and_reconnects(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = script("load.py", "--bundle", str(bundle), "--clients", "2", "--minutes", "0.17", "--reconnect",
                 "--sample-s", "1", "--window-s", "5", "--warmup-s", "2", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "| from min | finals | latency p50 ms |" in run.stdout
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["clients"] == 2 and s["errors"] == 0, s["error_kinds"]
    assert s["finals"] >= 2 and s["sessions"] >= 2
    # The tiny model's compute is negligible: latency is the endpoint silence (600 ms) and some.
    assert 0 < s["latency"]["p50_ms"] <= s["latency"]["p95_ms"] <= s["latency"]["p99_ms"] <= s["latency"]["max_ms"]
    assert 300 < s["latency"]["p50_ms"] < 5000
    assert 0 < s["rss_mb"]["min_after_warmup"] <= s["rss_mb"]["max_after_warmup"]
    assert s["rss_mb"]["drift_pct"] is not None and s["daemon_cpu_pct"] > 0
    assert s["daemon_exit_code"] == 0
    assert len(data["windows"]) >= 2 and sum(w["finals"] for w in data["windows"]) == s["finals"]
    rss = [x["rss_mb"] for x in data["samples"] if x.get("rss_mb")]
    assert len(rss) >= 8 and all(r > 10 for r in rss)
    assert max(x["sessions_total"] for x in data["samples"]) >= s["sessions"] - 1  # /metrics was read
    assert [c["client"] for c in data["clients"]] == [0, 1]


def test_load_memtrace_snapshots_the_daemon_and_reports_what_grew(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "memtrace"
    run = script("load.py", "--bundle", str(bundle), "--clients", "2", "--minutes", "0.2", "--reconnect",
                 "--sample-s", "1", "--warmup-s", "2", "--memtrace", str(out), "--memtrace-every", "4",
                 "--frames", "2", timeout=180)
    assert run.returncode == 0, run.stderr
    figures = [json.loads(line) for line in (out / "memory.jsonl").read_text().splitlines()]
    assert [f["n"] for f in figures] == list(range(1, len(figures) + 1)) and len(figures) >= 3
    for f in figures:
        assert (out / f["snapshot"]).is_file() and f["traced_bytes"] > 10**6 and f["rss_bytes"] > f["traced_bytes"]
        assert f["glibc"]["in_use_bytes"] > 0 and f["gc_objects"] > 1000 and len(f["gc_stats"]) == 3
        assert any(name.startswith("tympan.daemon.") for name in f["objects"])  # the daemon's live objects
    assert "| snapshot | min | sessions | RSS MB |" in run.stdout
    assert f"against {figures[1]['snapshot']}" in run.stdout  # the growth since the first snapshot after warm-up
    compare = script("memtrace.py", "compare", str(out / "001.snapshot"), str(out / figures[-1]["snapshot"]),
                     "--top", "3")
    assert compare.returncode == 0 and compare.stdout.startswith("traced ") and "KiB" in compare.stdout


def test_load_refuses_other_hosts_and_unbounded_runs() -> None:
    run = script("load.py", "--url", "ws://192.0.2.1:8765/v1/stream", "--minutes", "1")
    assert run.returncode == 2 and "non-loopback 192.0.2.1" in run.stderr
    run = script("load.py", "--clients", "65")
    assert run.returncode == 2 and "--clients must be 1-64" in run.stderr
    run = script("load.py", "--minutes", "121")
    assert run.returncode == 2 and "--minutes must be" in run.stderr


def test_peer_compares_tympan_and_faster_whisper(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    run = script("peer.py", "--bundle", str(bundle), "--limit", "2", "--whisper", "tiny.en", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "| system | WER % | latency p50 ms | latency p95 ms | RTF | CPU s per audio s |" in run.stdout
    data = json.loads(out.read_text())
    tympan, whisper = data["rows"]
    assert tympan["system"].startswith("tympan (tiny") and whisper["system"].startswith("faster-whisper tiny.en")
    for row in (tympan, whisper):
        assert row["utterances"] == 2
        assert row["latency_p50_ms"] > 0 and row["rtf"] > 0 and row["cpu_s_per_audio_s"] > 0
        assert 0 <= row["wer_pct"] <= 200
    assert tympan["missed"] == 0 and tympan["latency_p50_ms"] > 300  # it waits for the endpoint silence
    assert tympan["parts"] >= 2 and 0 <= tympan["stable_taken_back_pct"] <= 100  # partials' stable words scored
    assert "parts" not in whisper  # no partials: nothing to score
    # Whisper tiny.en gets these two clean human recordings right: the audio reached it intact.
    assert whisper["wer_pct"] < 30, data["utterances"]
    assert [u["id"] for u in data["utterances"][whisper["system"]]] == [u["id"] for u in
                                                                        data["utterances"][tympan["system"]]]


def test_stable_words_the_final_contradicts_are_counted() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from peer import taken_back
    finally:
        sys.path.remove(str(BENCHMARKS))
    pairs = [("The cat", "the cat sat."), ("the dog ran", "The dog sat"), ("", "anything"), ("red blue", "red")]
    assert taken_back(pairs) == {"stable_words": 7, "stable_taken_back_pct": round(100 * 2 / 7, 1),
                                 "parts_with_a_take_back": 2, "parts": 4}
    assert taken_back([]) == {}


def test_hearing_measures_the_prompt_and_the_terms(tmp_path: Path) -> None:
    out = tmp_path / "hearing.json"
    run = script("hearing.py", "--whisper", "tiny.en", "--parts", "prompt,terms", "--json", str(out), timeout=240)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert [r["prompt"] for r in data["prompt"]] == ["nothing", "the previous final"]
    assert all(0 <= r["wer_pct"] <= 200 for r in data["prompt"])
    without, with_terms = data["terms"]["rows"]
    assert without["names"] == with_terms["names"] > 20
    # The names given as terms reach Whisper's prompt: more of them are spelt right.
    assert with_terms["names_right"] > without["names_right"]
    assert "| reading | names right | WER % |" in run.stdout
    bad = script("hearing.py", "--parts", "window,nothing")
    assert bad.returncode == 2 and "unknown part 'nothing'" in bad.stderr
