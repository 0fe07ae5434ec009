"""Shared test helpers: settings in a temp home, a real `conveyor serve` process, images."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageFont

from conveyor.config import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a test: everything under ``home``, nothing from the environment."""
    values: dict[str, Any] = {"home": home, "workers": 1, "executor": "inline",
                              "backoff_base_s": 0.05, "backoff_cap_s": 0.2,
                              "poll_interval_s": 0.05, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def env_for(home: Path, **overrides: str) -> dict[str, str]:
    """Environment for a `conveyor` subprocess: only CONVEYOR_ settings we choose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_HOME": str(home), "CONVEYOR_BACKOFF_BASE_S": "0.1",
                "CONVEYOR_BACKOFF_CAP_S": "0.5", "CONVEYOR_POLL_INTERVAL_S": "0.05",
                "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / "DejaVuSans-Bold.ttf"
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def make_cover(path: Path, lines: list[tuple[str, int]], *, size: int = 800,
               fmt: str = "JPEG", bg: tuple[int, int, int] = (20, 30, 90)) -> Path:
    """A synthetic record cover: each (text, font size) drawn top to bottom in white."""
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    y = 60
    for text, px in lines:
        draw.text((50, y), text, fill=(255, 255, 255), font=font(px))
        y += int(px * 1.8)
    img.save(path, fmt)
    return path


# A cover that OCR alone reads confidently enough to auto-archive (≥ 0.9):
FULL_COVER = [("PINK FLOYD", 64), ("The Dark Side of the Moon", 44),
              ("HARVEST SHVL 804 1973", 30), ("5099902987620", 28)]
# Artist and album only: OCR cannot tell which is which → escalates to Level 3.
SPARSE_COVER = [("Trash80", 64), ("Icarus", 62)]
# Between the thresholds (0.75 ≤ c < 0.9): AI_ANALYZED, waits for review.
MIDDLE_COVER = [("PINK FLOYD", 64), ("The Dark Side of the Moon", 44),
                ("HARVEST SHVL 804 1973", 30)]


@dataclass
class LiveServer:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    env: dict[str, str] | None = None  # what `conveyor` commands for this server need

    def stored_keys(self) -> list[str]:
        """Every storage key this server has written, on local disk or in S3."""
        url = (self.env or {}).get("CONVEYOR_STORAGE_URL", "")
        if url.startswith("s3://"):
            from conveyor.storage import parse_s3_url
            from tests.backends import shared_s3

            bucket, prefix = parse_s3_url(url)[:2]
            pages = shared_s3().client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
            return sorted(o["Key"].removeprefix(f"{prefix}/" if prefix else "")
                          for page in pages for o in page.get("Contents", []))
        root = self.home / "storage"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def cli(self, *args: str, **kw: Any) -> str:
        """Run a `conveyor` command against this server's database and storage."""
        return run_cli(self.home, *args, env=self.env, **kw)

    def client(self, user: str = "admin", **kw: Any) -> httpx.Client:
        token = self.admin_token if user == "admin" else self.tokens[user]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=kw.pop("timeout", 30.0), **kw)

    def add_user(self, name: str, admin: bool = False) -> str:
        out = self.cli("users", "create", name, *(["--admin"] if admin else []))
        token = out.strip().splitlines()[-1].strip()
        self.tokens[name] = token
        return token

    def worker_pids(self) -> list[int]:
        """PIDs of this server's local worker processes."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        pids = []
        for pid in out.split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in cmd and b"spawn_main" in cmd:
                pids.append(int(pid))
        return pids

    def wait_for(self, preview_id: str, states: tuple[str, ...], timeout: float = 60.0,
                 user: str = "admin") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        with self.client(user) as c:
            while time.monotonic() < deadline:
                r = c.get(f"/api/v1/upap/preview/{preview_id}")
                if r.status_code == 200:
                    last = r.json()
                    if last["state"] in states:
                        return last
                time.sleep(0.1)
        raise AssertionError(f"{preview_id} did not reach {states}; last: {last}")


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=REPO,
                          env=env or env_for(home), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"conveyor {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def live_server(home: Path, *, workers: int = 1, env: dict[str, str] | None = None,
                startup_timeout: float = 60.0, stack: str = "embedded",
                celery_workers: int = 1) -> Iterator[LiveServer]:
    """`conveyor serve` in its own process group, on a free port, with ``workers`` workers.

    ``stack="embedded"``: SQLite, local files, local worker processes inside the server.
    ``stack="scaled"``: PostgreSQL, S3 storage, and ``celery_workers`` separate `conveyor
    worker --executor celery` processes (``workers`` pool processes each) fed through Redis:
    "machines" that share nothing but the services.
    """
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as resources:
        environment = env_for(home, CONVEYOR_WORKERS=str(workers), CONVEYOR_EXECUTOR="local")
        if stack == "scaled":
            from tests.backends import scaled_env

            environment.update(resources.enter_context(scaled_env()))
        environment.update(env or {})
        out = run_cli(home, "bootstrap", env=environment)
        token = out.strip().splitlines()[-1].strip()
        port = free_port()
        log_path = home / "server.log"
        server_proc = resources.enter_context(_process_group(
            [sys.executable, "-m", "conveyor.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)], environment, log_path))
        server = LiveServer(f"http://127.0.0.1:{port}", home, server_proc, token,
                            log_path=log_path, env=environment)
        for n in range(celery_workers if stack == "scaled" else 0):
            worker_log = home / f"worker{n}.log"
            worker = resources.enter_context(_process_group(
                [sys.executable, "-m", "conveyor.cli", "worker", "--executor", "celery"],
                environment, worker_log))
            _wait_for(lambda log=worker_log: b" ready." in log.read_bytes(),  # type: ignore[misc]
                      worker, worker_log, startup_timeout, "celery worker")
        _wait_for(lambda: _healthy(server.url), server_proc, log_path, startup_timeout,
                  "server")
        yield server


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(ready: Any, proc: subprocess.Popen[bytes], log_path: Path, timeout: float,
              what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start:\n"
                                 f"{log_path.read_text(errors='replace')}")
        time.sleep(0.1)


@contextlib.contextmanager
def _process_group(argv: list[str], env: dict[str, str],
                   log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, logging to ``log_path``; SIGTERM (then SIGKILL) at exit."""
    log = open(log_path, "wb")  # noqa: SIM115  (closed in the finally below)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
