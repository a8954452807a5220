"""Prometheus metrics in the text exposition format, without a client library."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence


class Metric:
    def __init__(self, name: str, help_text: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help_text, kind

    def lines(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self.samples()]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(Metric):
    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text, "counter")
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def samples(self) -> list[str]:
        return [f"{self.name} {self.value:g}"]


class LabeledCounter(Metric):
    """A counter per value of one label (e.g. sessions per protocol); a value appears once counted."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        super().__init__(name, help_text, "counter")
        self.label, self.values = label, dict[str, float]()

    def inc(self, value: str, amount: float = 1.0) -> None:
        self.values[value] = self.values.get(value, 0.0) + amount

    def samples(self) -> list[str]:
        return [f'{self.name}{{{self.label}="{v}"}} {n:g}' for v, n in sorted(self.values.items())]


class Gauge(Metric):
    """A gauge read from a function at scrape time, so it never goes stale."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text, "gauge")
        self.read = read

    def samples(self) -> list[str]:
        return [f"{self.name} {float(self.read()):g}"]


class CounterReading(Gauge):
    """A counter kept elsewhere (e.g. by the inference thread), read at scrape time."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text, read)
        self.kind = "counter"


class Histogram(Metric):
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, "histogram")
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def samples(self) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{self.name}_sum {self.total:g}", f"{self.name}_count {self.n}"]
        return out


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.lines()) + "\n"


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample name (labels included): value}: what clients of
    /metrics (tests, benchmarks) read back."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
