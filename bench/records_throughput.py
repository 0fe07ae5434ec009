"""Record covers per minute through the real records pipeline versus raw OCR.

Generates N synthetic covers (a mix of full, middle and sparse texts, each a little
different), uploads them with ``create_preview`` and runs the real pipeline (canonicalize
→ OCR + heuristics → vision skipped, no LLM → enrich skipped, no catalogue) on the local
executor with W worker processes, until no cover is UPLOADED any more. Then it runs
``RapidOcrEngine.read`` alone on the same canonical JPEGs in a process pool of W processes.

Cold: the processes start and load their OCR models inside the measurement, as on a
fresh server (pipeline first, then raw). Warm: ``--rounds`` more batches of each side on
the same, already loaded processes, alternating which side goes first so that a drift in
the machine's background load does not favour one side (both sides' processes stay up
for the whole run; the idle side only polls). Orchestration overhead = 1 - pipeline rate
/ raw OCR rate over all batches of a phase (DESIGN.md target: ≤ 15 %, ratio ≥ 0.85).

On a shared machine other people's work slows whichever side happens to run at the time,
so the script also prints a load-normalised ratio: the share of each side's wall time
that its processes spent inside ``RapidOcrEngine.read`` (sum of read times / (processes x
wall)), pipeline share / raw share. Background load stretches the reads and the
orchestration alike, so that ratio moves much less from run to run.

    .venv/bin/python bench/records_throughput.py --covers 24 --workers 2 --rounds 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    bench_settings,
    clean_environment,
    header,
    mean,
    print_table,
    wait_until,
    write_json,
)

LEFT_UPLOADED = ("AI_ANALYZED", "ARCHIVED", "ENRICHED", "FAILED")


@dataclass
class Phase:
    side: str  # pipeline or raw
    phase: str  # cold or warm
    covers: int
    wall_s: float
    per_min: float
    drained_s: float = float("nan")  # pipeline: until no job is pending or running
    ocr_ms_mean: float = float("nan")  # mean time inside RapidOcrEngine.read
    step_ms: dict[str, float] = field(default_factory=dict)  # pipeline: job time by step
    states: dict[str, int] = field(default_factory=dict)
    timeline: dict[str, float] = field(default_factory=dict)  # pipeline: s after start
    ocr_share: float = float("nan")  # time inside OCR reads / (processes x wall)

    def with_share(self, workers: int) -> Phase:
        self.ocr_share = self.covers * self.ocr_ms_mean / (workers * self.wall_s * 1000)
        return self


# -- raw OCR in a process pool ---------------------------------------------------------

_ENGINE: Any = None


def _init_ocr() -> None:
    global _ENGINE
    from conveyor.providers.ocr.rapid import RapidOcrEngine

    _ENGINE = RapidOcrEngine()


def _read(path: str) -> int:
    result = _ENGINE.read(Path(path))
    return int(result.duration_ms)


def raw_batch(pool: ProcessPoolExecutor, paths: list[Path], phase: str,
              started: float | None = None) -> Phase:
    """OCR every path once in ``pool``; ``started`` lets the cold run include pool start."""
    started = time.monotonic() if started is None else started
    durations = list(pool.map(_read, [str(p) for p in paths]))
    wall = time.monotonic() - started
    return Phase("raw OCR", phase, len(paths), wall, len(paths) / wall * 60,
                 ocr_ms_mean=mean(durations))


# -- the records pipeline --------------------------------------------------------------


def _upload(settings: Any, storage: Any, owner_id: str, covers: list[Path]) -> list[str]:
    from conveyor.pipelines.records.service import create_preview

    ids = []
    for path in covers:
        with open(path, "rb") as f:
            ids.append(create_preview(settings, storage, owner_id=owner_id, filename=path.name,
                                      stream=f).preview_id)
    return ids


def _states(db: str, ids: list[str]) -> dict[str, int]:
    from sqlalchemy import func, select

    from conveyor.db.models import Item
    from conveyor.db.session import read_session

    with read_session(db) as session:
        rows = session.execute(select(Item.state, func.count()).where(Item.id.in_(ids))
                               .group_by(Item.state)).all()
    return {state: int(n) for state, n in rows}


def _active_jobs(db: str) -> int:
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    with read_session(db) as session:
        return int(session.scalar(select(func.count()).select_from(Job)
                                  .where(Job.status.in_(("pending", "running")))) or 0)


def _step_times(db: str, ids: list[str]) -> tuple[dict[str, float], float]:
    """Total job processing time per step (ms), and the mean OCR read time (ms)."""
    from sqlalchemy import func, select

    from conveyor.db.models import AuditEvent, Job
    from conveyor.db.session import read_session

    with read_session(db) as session:
        rows = session.execute(select(Job.step, func.sum(Job.processing_time_ms))
                               .where(Job.item_id.in_(ids)).group_by(Job.step)).all()
        ocr = session.scalar(select(func.avg(AuditEvent.duration_ms))
                             .where(AuditEvent.item_id.in_(ids),
                                    AuditEvent.step == "LEVEL_1_OCR"))
    return {step: float(ms or 0) for step, ms in rows}, float(ocr or float("nan"))


def _timeline(db: str, ids: list[str], start: datetime) -> dict[str, float]:
    """Seconds from ``start`` to the first claim, the first OCR claim and the first OCR
    completion of this batch, from the job rows."""
    from sqlalchemy import func, select

    from conveyor.db.models import Job
    from conveyor.db.session import read_session

    def since(t: datetime | None) -> float:
        if t is None:
            return float("nan")
        return (t.replace(tzinfo=t.tzinfo or UTC) - start).total_seconds()

    with read_session(db) as session:
        first = session.scalar(select(func.min(Job.started_at)).where(Job.item_id.in_(ids)))
        ocr = session.execute(select(func.min(Job.started_at), func.min(Job.finished_at))
                              .where(Job.item_id.in_(ids), Job.step == "ocr")).one()
    return {"first_claim": since(_dt(first)), "first_ocr_claim": since(_dt(ocr[0])),
            "first_ocr_done": since(_dt(ocr[1]))}


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _canonical_paths(settings: Any, storage: Any, ids: list[str]) -> list[Path]:
    from sqlalchemy import select

    from conveyor.db.models import Artifact
    from conveyor.db.session import read_session

    with read_session(settings.resolved_database_url) as session:
        keys = dict(session.execute(select(Artifact.item_id, Artifact.storage_key).where(
            Artifact.item_id.in_(ids), Artifact.kind == "canonical_jpeg")).all())
    return [storage.local_path(keys[i]) for i in ids if i in keys]


class PipelineSide:
    """A home with one user and a local executor; uploads batches and waits for them."""

    def __init__(self, home: Path, workers: int, timeout: float) -> None:
        from conveyor.accounts import create_user
        from conveyor.engine.executors.local import LocalExecutor
        from conveyor.runtime import build_runner, prepare, storage_for

        self.settings = bench_settings(home, workers=workers)
        prepare(self.settings)
        self.db = self.settings.resolved_database_url
        self.storage = storage_for(self.settings)
        self.owner_id = create_user(self.db, "bench")[0].id
        self.executor = LocalExecutor(self.settings, build_runner, workers=workers)
        self.timeout = timeout
        self.all_ids: list[str] = []

    def batch(self, covers: list[Path], phase: str) -> Phase:
        """Cold: the covers are waiting when the workers start (process spawn, imports and
        the OCR model load are inside the measurement). Warm: uploaded to running workers."""
        started = time.monotonic()
        if phase == "cold":
            ids = _upload(self.settings, self.storage, self.owner_id, covers)
            started = time.monotonic()
            start_utc = datetime.now(UTC)
            self.executor.start()
        else:
            start_utc = datetime.now(UTC)
            ids = _upload(self.settings, self.storage, self.owner_id, covers)
        self.all_ids = ids
        db = self.db
        done = wait_until(lambda: _states(db, ids).get("UPLOADED", 0) == 0,
                          timeout=self.timeout, interval=0.05, what="covers to leave UPLOADED")
        drained = wait_until(lambda: _active_jobs(db) == 0, timeout=self.timeout,
                             interval=0.05, what="the job queue to drain")
        steps, ocr_ms = _step_times(db, ids)
        wall = done - started
        return Phase("pipeline", phase, len(ids), wall, len(ids) / wall * 60,
                     drained_s=drained - started, ocr_ms_mean=ocr_ms, step_ms=steps,
                     states=_states(db, ids), timeline=_timeline(db, ids, start_utc))

    def canonical(self) -> list[Path]:
        return _canonical_paths(self.settings, self.storage, self.all_ids)

    def stop(self) -> None:
        self.executor.stop()


def run(covers: list[Path], home: Path, workers: int, rounds: int,
        timeout: float) -> list[Phase]:
    """Cold pipeline, cold raw OCR, then ``rounds`` warm rounds of each, alternating."""
    phases: list[Phase] = []
    pipeline = PipelineSide(home, workers, timeout)
    try:
        phases.append(pipeline.batch(covers, "cold"))
        canonical = pipeline.canonical()
        if len(canonical) != len(covers):
            print(f"   note: only {len(canonical)} of {len(covers)} covers were canonicalised")
        started = time.monotonic()
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_ocr) as pool:
            phases.append(raw_batch(pool, canonical, "cold", started))
            for r in range(rounds):
                # alternate which side goes first, so a drift in the machine's background
                # load does not favour one side
                order = ("raw", "pipeline") if r % 2 == 0 else ("pipeline", "raw")
                for side in order:
                    if side == "raw":
                        phases.append(raw_batch(pool, canonical, "warm"))
                    else:
                        phases.append(pipeline.batch(covers, "warm"))
    finally:
        pipeline.stop()
    return phases


def _total(phases: list[Phase], side: str, phase: str) -> tuple[int, float, float]:
    """Covers, wall seconds and OCR seconds of every batch of one side and phase."""
    chosen = [p for p in phases if p.side == side and p.phase == phase]
    return (sum(p.covers for p in chosen), sum(p.wall_s for p in chosen),
            sum(p.covers * p.ocr_ms_mean / 1000 for p in chosen))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--covers", type=int, default=24, help="covers per batch")
    parser.add_argument("--rounds", type=int, default=2,
                        help="warm batches of each side (alternating)")
    parser.add_argument("--workers", type=int, default=2, help="worker / pool processes")
    parser.add_argument("--size", type=int, default=800, help="cover side in pixels")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    clean_environment()
    header(f"records throughput ({args.covers} covers, {args.workers} processes, "
           f"{args.rounds} warm rounds)")
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-records-"))
    try:
        from bench.covers import make_covers

        made = make_covers(tmp / "covers", args.covers, size=args.size)
        kinds = {k: sum(1 for kind, _ in made if kind == k) for k in ("full", "middle", "sparse")}
        print(f"   covers: {kinds}")
        phases = run([p for _, p in made], tmp / "home", args.workers, args.rounds,
                     args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    for p in phases:
        p.with_share(args.workers)
    print_table(["side", "phase", "covers", "wall s", "covers/min", "drained s",
                 "mean OCR ms", "OCR share"],
                [[p.side, p.phase, p.covers, p.wall_s, p.per_min, p.drained_s,
                  p.ocr_ms_mean, f"{100 * p.ocr_share:.0f} %"] for p in phases])
    rates: dict[str, float] = {}
    ratios: dict[str, float] = {}
    share_ratios: dict[str, float] = {}
    for phase in ("cold", "warm"):
        shares = {}
        for side in ("pipeline", "raw OCR"):
            n, wall, ocr_s = _total(phases, side, phase)
            rates[f"{side} {phase}"] = n / wall * 60 if wall else float("nan")
            shares[side] = ocr_s / (args.workers * wall) if wall else float("nan")
        ratios[phase] = rates[f"pipeline {phase}"] / rates[f"raw OCR {phase}"]
        share_ratios[phase] = shares["pipeline"] / shares["raw OCR"]
        print(f"   {phase}: pipeline {rates[f'pipeline {phase}']:.1f}/min, raw OCR "
              f"{rates[f'raw OCR {phase}']:.1f}/min → ratio {ratios[phase]:.2f} "
              f"(orchestration overhead {100 * (1 - ratios[phase]):.0f} %; target ratio ≥ 0.85)")
        print(f"   {phase}, load-normalised: OCR share of the wall time, pipeline "
              f"{100 * shares['pipeline']:.0f} % / raw {100 * shares['raw OCR']:.0f} % → "
              f"ratio {share_ratios[phase]:.2f}")
    for p in phases:
        if p.side == "pipeline":
            steps = ", ".join(f"{k} {v / 1000:.1f}s" for k, v in sorted(p.step_ms.items()))
            t = p.timeline
            busy = sum(p.step_ms.values()) / (args.workers * p.wall_s * 1000)
            print(f"   pipeline {p.phase}: job time by step: {steps} (inside jobs: "
                  f"{100 * busy:.0f} % of worker wall time); states: {p.states}; "
                  f"first claim at {t['first_claim']:.1f}s, first OCR claim at "
                  f"{t['first_ocr_claim']:.1f}s, first OCR done at {t['first_ocr_done']:.1f}s")
    payload = {"benchmark": "records_throughput", "args": vars(args), "kinds": kinds,
               "phases": [asdict(p) for p in phases], "rates_per_min": rates,
               "ratios": ratios, "share_ratios": share_ratios}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
