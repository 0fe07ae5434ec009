"""Upload latency (p50/p95/p99) and requests/s with concurrent clients against a real
``conveyor serve`` process (``tests.support.live_server``: SQLite in a temporary home).

Each client is a thread with its own keep-alive ``httpx.Client`` that POSTs small JPEG
covers to ``/api/v1/upap/upload``; the latency is measured per request, on the client.
Each server first takes ``--baseline`` uploads from one client (the service time without
queueing), then the concurrent run. Two server set-ups:

- ``noworkers``: ``CONVEYOR_EXECUTOR=inline``, so ``serve`` starts no worker process and
  the upload only stores and enqueues (what the DESIGN.md target describes);
- ``local1``: one local worker process, which canonicalises and OCRs the uploaded covers
  at the same time on the same 2 cores (what a user of ``make run`` sees).

    .venv/bin/python bench/upload_latency.py --clients 20 --requests 300
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    clean_environment,
    header,
    mean,
    percentile,
    print_table,
    write_json,
)

MODES = {
    "noworkers": {"CONVEYOR_EXECUTOR": "inline"},
    "local1": {},
}
# No catalogue: the official API without a token is never called (see build_catalog).
COMMON_ENV = {"CONVEYOR_DISCOGS_BASE_URL": "https://api.discogs.com"}


@dataclass
class Result:
    mode: str
    clients: int
    offered_per_s: float  # 0: closed loop
    requests: int
    errors: int
    wall_s: float
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    jpeg_kb: float


def small_covers(count: int, size: int) -> list[bytes]:
    from bench.covers import cover_lines
    from tests.support import make_cover

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-covers-"))
    try:
        for i in range(count):
            _, lines = cover_lines(i)
            # scale the font sizes to the smaller cover
            scaled = [(text, max(8, px * size // 800)) for text, px in lines]
            out.append(make_cover(tmp / f"c{i}.jpg", scaled, size=size).read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def hammer(url: str, token: str, covers: list[bytes], clients: int, total: int,
           rate: float = 0.0) -> tuple[list[float], int, float]:
    """``total`` uploads spread over ``clients`` threads; (latencies s, errors, wall s).

    ``rate`` 0: each client sends its next upload as soon as the last one is answered (a
    closed loop, as fast as the server goes). ``rate`` > 0: uploads are due at ``rate`` per
    second in all, spread over the clients, and latency counts from when each was due (so
    a server that falls behind is not flattered)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    t0 = 0.0

    def client(n: int, count: int) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=60.0) as c:
            barrier.wait()
            for k in range(count):
                data = covers[(n * 31 + k) % len(covers)]
                started = time.perf_counter()
                if rate > 0:
                    started = t0 + (k * clients + n) / rate
                    time.sleep(max(0.0, started - time.perf_counter()))
                try:
                    r = c.post("/api/v1/upap/upload",
                               files={"file": (f"cover-{n}-{k}.jpg", io.BytesIO(data),
                                               "image/jpeg")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - started)
                bad += 0 if ok else 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=client, args=(i, per_client[i]), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter() + 0.05
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def _result(mode: str, clients: int, rate: float, latencies: list[float], errors: int,
            wall: float, covers: list[bytes]) -> Result:
    ms = [x * 1000 for x in latencies]
    return Result(mode, clients, rate, len(ms), errors, wall, len(ms) / wall,
                  percentile(ms, 50), percentile(ms, 95), percentile(ms, 99), max(ms),
                  mean(ms), mean([len(c) for c in covers]) / 1024)


def run_mode(mode: str, clients: int, total: int, covers: list[bytes], warmup: int,
             baseline: int, rates: list[float]) -> list[Result]:
    """One server: ``baseline`` uploads from a single client (the service time with no
    queueing), then ``total`` uploads from ``clients`` clients at each of ``rates``."""
    import httpx

    from tests.support import live_server

    home = Path(tempfile.mkdtemp(prefix=f"conveyor-bench-upload-{mode}-"))
    results = []
    try:
        with live_server(home, workers=1, env={**COMMON_ENV, **MODES[mode]}) as server:
            token = server.admin_token
            # warm-up: the first requests import and compile what the upload path needs
            with httpx.Client(base_url=server.url,
                              headers={"Authorization": f"Bearer {token}"}) as c:
                for i in range(warmup):
                    c.post("/api/v1/upap/upload",
                           files={"file": (f"warm-{i}.jpg", covers[i % len(covers)],
                                           "image/jpeg")})
            if baseline > 0:
                results.append(_result(mode, 1, 0.0, *hammer(server.url, token, covers, 1,
                                                             baseline), covers))
            for rate in rates:
                results.append(_result(mode, clients, rate, *hammer(
                    server.url, token, covers, clients, total, rate), covers))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=300, help="uploads in all, per mode")
    parser.add_argument("--size", type=int, default=400, help="cover side in pixels")
    parser.add_argument("--warmup", type=int, default=5, help="uploads before measuring")
    parser.add_argument("--rate", default="0",
                        help="offered uploads/s in all, comma separated for several runs; "
                        "0 (default): closed loop, each client as fast as it is answered")
    parser.add_argument("--baseline", type=int, default=50,
                        help="uploads from a single client first (0: skip)")
    parser.add_argument("--modes", default="noworkers,local1",
                        help=f"comma separated, of: {', '.join(MODES)}")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    clean_environment()
    header(f"upload latency ({args.clients} clients, {args.requests} uploads per mode)")
    covers = small_covers(12, args.size)
    rates = [float(r) for r in str(args.rate).split(",") if r.strip()]
    results = [r for m in modes
               for r in run_mode(m, args.clients, args.requests, covers, args.warmup,
                                 args.baseline, rates)]
    print_table(["server", "clients", "offered/s", "requests", "errors", "wall s", "req/s",
                 "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms", "JPEG KB"],
                [[r.mode, r.clients, r.offered_per_s or "max", r.requests, r.errors, r.wall_s,
                  r.per_s, r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.mean_ms, r.jpeg_kb]
                 for r in results])
    print("   latency per request on the client (same machine); target: p95 < 50 ms.")
    print("   offered/s max: closed loop (each client sends again as soon as it is answered);")
    print("   a number: paced, latency counted from when each upload was due.")
    payload = {"benchmark": "upload_latency", "args": vars(args),
               "results": [asdict(r) for r in results]}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
