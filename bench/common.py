"""Helpers shared by the benchmarks: clean settings, timing, tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def clean_environment(home: Path | None = None) -> None:
    """Forget every CONVEYOR_ setting of the caller so a benchmark runs on the embedded
    defaults (SQLite + local files) in its own home; children inherit the clean env."""
    for key in [k for k in os.environ if k.startswith("CONVEYOR_")]:
        del os.environ[key]
    if home is not None:
        os.environ["CONVEYOR_HOME"] = str(home)


def bench_settings(home: Path, **overrides: Any) -> Any:
    """Settings for a benchmark: everything under ``home``, nothing from the environment.

    The defaults otherwise: no LLM and no catalogue (the official Discogs API without a
    token is not called), so nothing leaves the machine."""
    from conveyor.config import Settings

    values: dict[str, Any] = {"home": home, "executor": "local", "workers": 1, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05,
               what: str = "condition") -> float:
    """Poll ``predicate`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "loadavg_1m": round(load[0], 2),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the machine) for run_all.py; no-op without ``--json``."""
    if not path:
        return
    Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))


def header(title: str) -> None:
    m = machine()
    print(f"== {title} ==")
    print(f"   {m['date']}, {m['cpus']} CPUs, Python {m['python']}, "
          f"load average (1 min) {m['loadavg_1m']} at start")
    sys.stdout.flush()
