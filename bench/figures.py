"""A benchmark's result: one figure, with the bound it must keep (if any) and whether it does."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    """One measured number, as the table shows it and results.json keeps it."""

    benchmark: str
    """Which benchmark measured it, e.g. "loop overhead"."""
    name: str
    """What it is, e.g. "runner time per run, runs 1-10, median"."""
    value: float | int | None
    """The number, in `unit`; None when it could not be measured."""
    unit: str
    """ms, s, bytes, chars, tokens, MB, MB/s or x (a ratio)."""
    shown: str = ""
    """The value as the table shows it, when plain formatting would say less (e.g. chars and tokens together)."""
    bound: str = ""
    """The bound in words, e.g. "<= 1.2"; empty for figures reported for information."""
    passed: bool | None = None
    """Whether the bound holds; None without a bound."""

    def as_dict(self) -> dict:
        return asdict(self)

    def display(self) -> str:
        if self.shown:
            return self.shown
        if self.value is None:
            return "n/a"
        if self.unit == "bytes":
            return bytes_text(self.value)
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if isinstance(self.value, int):
            return f"{self.value:,} {self.unit}"
        return f"{self.value:,.1f} {self.unit}" if abs(self.value) >= 10 else f"{self.value:.3g} {self.unit}"


def bytes_text(size: int) -> str:
    return f"{size:,} B ({size / 2**10:,.1f} KiB)"


def at_most(value: float | None, limit: float) -> bool:
    """A bound check that fails when nothing was measured."""
    return value is not None and value <= limit


def at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def growth_ratio(benchmark: str, name: str, late: float | None, early: float | None, limit: float, digits: int = 2) -> Figure:
    """`late` / `early`, bounded to at most `limit`: how much something grew between an early and a late measurement."""
    ratio = late / early if late is not None and early else None
    return Figure(benchmark, name, None if ratio is None else round(ratio, digits), "x", bound=f"<= {limit:g}", passed=at_most(ratio, limit))


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p95(values: list[float]) -> float | None:
    """The 95th percentile, nearest rank (of 10 values, the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
