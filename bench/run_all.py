"""Run every benchmark in one go and print a summary against the DESIGN.md targets.

Each benchmark runs in its own interpreter (as ``bench/<name>.py --json FILE``), so one
benchmark's processes, caches and database never affect the next; their full output is
shown as they run, then one table sums up. Figures only: nothing passes or fails.

    .venv/bin/python bench/run_all.py                 # make bench (about 6-8 minutes)
    .venv/bin/python bench/run_all.py --quick         # smaller sizes, about 2-4 minutes
    .venv/bin/python bench/run_all.py --only engine_noop --jobs 5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, header, machine, print_table

BENCHMARKS = ("engine_noop", "records_throughput", "upload_latency", "scaled_throughput")


def command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "bench" / f"{name}.py"), "--json", str(out)]
    if name == "engine_noop":
        cmd += ["--jobs", str(args.jobs)]
    elif name == "records_throughput":
        cmd += ["--covers", str(args.covers), "--rounds", str(args.rounds)]
    elif name == "upload_latency":
        cmd += ["--requests", str(args.requests), "--clients", str(args.clients)]
    elif name == "scaled_throughput":
        cmd += ["--jobs", str(args.scale_jobs), "--photos", str(args.photos)]
        if args.quick:
            cmd += ["--brokers", "redis"]
    return cmd


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def summary(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """Rows: benchmark, figure, measured, reference, ratio or target."""
    rows: list[list[Any]] = []
    engine = results.get("engine_noop")
    if engine:
        conveyor = [r for r in engine["results"] if r["system"] == "conveyor"]
        huey = [r for r in engine["results"] if r["system"] == "huey"]
        best_huey = max((r["per_s"] for r in huey), default=float("nan"))
        for r in conveyor:
            label = f"{r['mode']} x{r['workers']}" if r["mode"] == "local" else r["mode"]
            ratio = r["per_s"] / best_huey if huey else float("nan")
            rows.append(["engine", f"no-op jobs/s, {label}", r["per_s"],
                         f"Huey {best_huey:,.0f}/s" if huey else "Huey: skipped",
                         f"{ratio:.2f}x (target ≥ 1.0)"])
        for r in engine["results"]:
            if r["system"] == "hand SQL":
                rows.append(["engine", "floor: same SQL by hand, 1 process", r["per_s"], "",
                             "reference"])
        for r in huey:
            rows.append(["engine", f"Huey no-op tasks/s, {r['mode'].split()[-1]} "
                         f"x{r['workers']}", r["per_s"], "", "reference"])
        for note in engine.get("notes", []):
            rows.append(["engine", note, "", "", ""])
    records = results.get("records_throughput")
    if records:
        rates = records["rates_per_min"]
        for phase in ("warm", "cold"):
            ratio = _num(records["ratios"].get(phase))
            rows.append(["records", f"covers/min, {phase}", _num(rates.get(f"pipeline {phase}")),
                         f"raw OCR {_num(rates.get(f'raw OCR {phase}')):,.1f}/min",
                         f"{ratio:.2f}x (target ≥ 0.85)"])
            share = _num(records.get("share_ratios", {}).get(phase))
            rows.append(["records", f"OCR-share ratio, {phase} (load-normalised)", share, "",
                         f"{share:.2f}x (target ≥ 0.85)"])
    upload = results.get("upload_latency")
    if upload:
        for r in upload["results"]:
            if r["clients"] == 1:
                rows.append(["upload", f"p50 ms, 1 client, {r['mode']}", r["p50_ms"],
                             f"p95 {r['p95_ms']:.0f} ms, {r['per_s']:.0f} req/s",
                             "service time, no queueing"])
                continue
            rows.append(["upload", f"p95 ms, {r['clients']} clients, {r['mode']}", r["p95_ms"],
                         f"p50 {r['p50_ms']:.0f} / p99 {r['p99_ms']:.0f} ms, "
                         f"{r['per_s']:.0f} req/s", "target < 50 ms"])
    scale = results.get("scaled_throughput")
    if scale:
        rows += _scale_rows(scale)
    return rows


def _scale_rows(scale: dict[str, Any]) -> list[list[Any]]:
    """Celery (+ PostgreSQL) against the embedded default, warm, same worker count."""
    rows: list[list[Any]] = []
    noop = [r for r in scale["noop"] if r["phase"] == "warm"]
    base = next((r for r in noop if r["setup"] == "embedded"), None)
    for r in noop:
        label = r["setup"] if r["broker"] == "-" else f"{r['setup']}+{r['broker']}"
        label = f"no-op jobs/s, warm, {label} ({r['database']}) x{r['workers']}"
        if base is None or r is base:
            rows.append(["scale", label, r["per_s"], f"steady {r['steady_per_s']:,.0f}/s",
                         "reference"])
            continue
        rows.append(["scale", label, r["per_s"],
                     f"embedded {base['per_s']:,.0f}/s (steady {base['steady_per_s']:,.0f})",
                     f"{r['per_s'] / base['per_s']:.2f}x (steady "
                     f"{r['steady_per_s'] / base['steady_per_s']:.2f}x)"])
    photos = [r for r in scale["photos"] if r["phase"] == "warm"]
    pbase = next((r for r in photos if r["setup"] == "embedded"), None)
    raw = scale.get("raw") or {}
    ideal = _num(raw.get("ideal_per_min"))
    for r in photos:
        label = "embedded" if r["setup"] == "embedded" else f"{r['setup']}+{r['broker']}"
        label = f"photos/min, warm, {label} ({r['database']}) x{r['workers']}"
        vs_raw = f"{r['vs_ideal']:.2f}x of raw x{r['workers']} ({ideal:,.0f}/min)"
        if pbase is None or r is pbase:
            rows.append(["scale", label, r["per_min"],
                         f"raw pool {_num(raw.get('pool_per_min')):,.0f}/min", vs_raw])
            continue
        rows.append(["scale", label, r["per_min"], f"embedded {pbase['per_min']:,.1f}/min",
                     f"{r['per_min'] / pbase['per_min']:.2f}x; {vs_raw}"])
    for r in scale["photos"]:
        if r["phase"] == "cold":
            label = "embedded" if r["setup"] == "embedded" else f"{r['setup']}+{r['broker']}"
            rows.append(["scale", f"photos cold: s to first photo done, {label}",
                         r["first_done_s"], "", "workers start, load OCR"])
    for note in scale.get("notes", []):
        rows.append(["scale", note, "", "", ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--jobs", type=int, help="engine_noop: no-op jobs (default 2000)")
    parser.add_argument("--covers", type=int, help="records_throughput: covers (default 24)")
    parser.add_argument("--rounds", type=int, help="records_throughput: warm rounds (2)")
    parser.add_argument("--requests", type=int, help="upload_latency: uploads (default 300)")
    parser.add_argument("--clients", type=int, default=20, help="upload_latency: clients")
    parser.add_argument("--scale-jobs", type=int,
                        help="scaled_throughput: no-op jobs per batch (default 1000)")
    parser.add_argument("--photos", type=int, help="scaled_throughput: photos (default 60)")
    parser.add_argument("--json", help="write every benchmark's results to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (500 if quick else 2000)
    args.covers = args.covers or (9 if quick else 24)
    args.rounds = args.rounds or (1 if quick else 2)
    args.requests = args.requests or (100 if quick else 300)
    args.scale_jobs = args.scale_jobs or (300 if quick else 1000)
    args.photos = args.photos or (16 if quick else 60)
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")

    header("Conveyor benchmarks")
    results: dict[str, dict[str, Any]] = {}
    durations: dict[str, float] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            cmd = command(name, args, out)
            print(f"\n$ {' '.join([Path(cmd[0]).name, *cmd[1:]])}", flush=True)
            started = time.monotonic()
            rc = subprocess.run(cmd, cwd=REPO).returncode
            durations[name] = time.monotonic() - started
            if rc != 0 or not out.exists():
                failed.append(f"{name} (exit status {rc})")
                continue
            results[name] = json.loads(out.read_text())

    print("\n== summary ==")
    m = machine()
    print(f"   {m['date']}, {m['cpus']} CPUs (shared: other work may run at the same time), "
          f"load average (1 min) {m['loadavg_1m']} at the end")
    print_table(["benchmark", "figure", "measured", "reference", "ratio / target"],
                summary(results))
    print("   took " + ", ".join(f"{n} {s:.0f}s" for n, s in durations.items()))
    for name in failed:
        print(f"   {name} did not finish; see its output above")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "results": results,
                                               "durations_s": durations}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
