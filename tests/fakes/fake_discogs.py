"""A fake Discogs API on 127.0.0.1, replaying ``../shared/corpus/api/discogs``.

In a test::

    with FakeDiscogs(token="t0k") as fake:
        fake.add_release(artist="Nirvana", title="Nevermind", barcode="720642442517")
        client = DiscogsCatalog(fake.url, "t0k", NoGuard(), 5.0)

As a process (prints the URL on its first line, serves until killed)::

    python -m tests.fakes.fake_discogs --port 0 --token t0k

What it does, like the real service:

- ``GET /database/search``: the search results of every corpus ``database/search_*.json``
  file plus the releases added with :meth:`FakeDiscogs.add_release`, filtered by ``type``,
  ``artist`` (exact name, case/accents/"The" ignored), ``release_title``, ``title``
  (``"Artist - Title"`` substring), ``q`` (every word appears somewhere), ``barcode``,
  ``catno``, ``label``, ``year``, ``genre``; paginated by ``per_page``/``page``. Like the real
  API, search needs authentication (401 without a token) unless ``search_requires_auth``
  is False.
- ``GET /releases/{id}``: an added release, else ``releases/{id}.json`` from the corpus.
- any other ``GET``: the corpus file named like the discogs_client fixtures
  (``path + '_' + query + '.json'``, else ``path + '.json'``), else 404.
- rate limit per client (the token, else the client address) over a moving window:
  ``rate_with_token``/``rate_without_token`` requests per ``window_s`` seconds (60/25 per
  60 s by default); beyond that 429 with ``Retry-After``. Every answer carries
  ``X-Discogs-Ratelimit``, ``-Used`` and ``-Remaining``.
- a request without ``User-Agent`` gets 403; a wrong token (when ``token`` is set) 401.
- :meth:`fail_next` makes the next N requests fail with a status (and ``Retry-After``).

Control endpoints for the subprocess mode (JSON bodies): ``POST /_fake/releases`` (the
keyword arguments of :meth:`add_release`), ``POST /_fake/fail_next`` (``{"n", "status",
"retry_after"}``), ``GET /_fake/requests``, ``POST /_fake/reset``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
import unicodedata
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from tests.fakes.json_handler import FakeServer, JsonHandler

CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "api" / "discogs"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names, values as received (tokens included)
    status: int = 0
    at: float = field(default_factory=time.monotonic)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.findall(r"\w+", text))


def _artist_key(name: str) -> str:
    name = re.sub(r"\s*\(\d+\)\s*$", "", name.strip().rstrip("*"))
    folded = _fold(name)
    return folded[4:] if folded.startswith("the ") else folded


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value).lstrip("0")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


class FakeDiscogs(FakeServer):
    def __init__(
        self,
        corpus_dir: Path | None = None,
        *,
        token: str | None = None,
        rate_with_token: int = 60,
        rate_without_token: int = 25,
        window_s: float = 60.0,
        search_requires_auth: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.corpus_dir = (corpus_dir or CORPUS_DIR).resolve()
        self.token = token
        self.rate_with_token = rate_with_token
        self.rate_without_token = rate_without_token
        self.window_s = window_s
        self.search_requires_auth = search_requires_auth
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}
        self._fail: list[tuple[int, float | None]] = []
        self._added: dict[int, dict[str, Any]] = {}
        self._next_id = 90_000_001
        self._corpus_results = self._load_corpus_results()
        super().__init__(_make_handler(self), host, port)

    # ------------------------------------------------------------------ programming

    def add_release(
        self,
        *,
        artist: str,
        title: str,
        catno: str | None = None,
        barcode: str | list[str] | None = None,
        year: int | str | None = None,
        label: str | list[str] | None = None,
        genre: list[str] | None = None,
        style: list[str] | None = None,
        country: str | None = None,
        format: list[str] | None = None,
        tracklist: list[dict[str, Any]] | None = None,
        release_id: int | None = None,
    ) -> int:
        """Add a release that search and ``/releases/{id}`` return; returns its id."""
        with self._lock:
            rid = release_id if release_id is not None else self._next_id
            self._next_id = max(self._next_id, rid) + 1
            labels = _as_list(label)
            result: dict[str, Any] = {
                "id": rid,
                "type": "release",
                "title": f"{artist} - {title}",
                "year": str(year) if year is not None else "",
                "label": labels,
                "catno": catno or "none",
                "barcode": _as_list(barcode),
                "genre": list(genre or []),
                "style": list(style or []),
                "country": country or "",
                "format": list(format or ["Vinyl", "LP", "Album"]),
                "thumb": f"https://img.example/R-150-{rid}.jpg",
                "cover_image": f"https://img.example/R-{rid}.jpg",
                "uri": f"/release/{rid}",
                "resource_url": f"/releases/{rid}",
                "master_id": 0,
                "community": {"want": 0, "have": 0},
            }
            release = {
                "id": rid,
                "status": "Accepted",
                "title": title,
                "artists": [{"name": artist, "anv": "", "join": "", "id": 0}],
                "artists_sort": artist,
                "year": int(year) if year not in (None, "") else 0,
                "labels": [{"name": n, "catno": catno or "none"} for n in labels],
                "genres": list(genre or []),
                "styles": list(style or []),
                "country": country or "",
                "formats": [{"name": (format or ["Vinyl"])[0], "qty": "1"}],
                "identifiers": [{"type": "Barcode", "value": b} for b in _as_list(barcode)],
                "tracklist": tracklist
                or [{"position": "A1", "title": "Track One", "duration": "3:00", "type_": "track"}],
                "resource_url": f"/releases/{rid}",
            }
            self._added[rid] = {"result": result, "release": release}
            return rid

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """The next ``n`` requests (after the User-Agent check) answer ``status``."""
        with self._lock:
            self._fail.extend([(status, retry_after)] * n)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._hits.clear()
            self._fail.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ data

    def _load_corpus_results(self) -> list[dict[str, Any]]:
        seen: dict[Any, dict[str, Any]] = {}
        for file in sorted((self.corpus_dir / "database").glob("search_*.json")):
            data = json.loads(file.read_text(encoding="utf-8"))
            for item in data.get("results", []):
                seen.setdefault((item.get("type"), item.get("id")), item)
        return list(seen.values())

    def _all_results(self) -> list[dict[str, Any]]:
        with self._lock:
            added = [v["result"] for v in self._added.values()]
        return [*added, *self._corpus_results]

    @staticmethod
    def _matches(item: dict[str, Any], params: dict[str, str]) -> bool:
        title = str(item.get("title") or "")
        artist, _, album = title.partition(" - ") if " - " in title else ("", "", title)
        labels = _as_list(item.get("label"))
        if (t := params.get("type")) and t != "all" and item.get("type") != t:
            return False
        if (a := params.get("artist")) and _artist_key(a) != _artist_key(artist):
            return False
        if (rt := params.get("release_title")) and _fold(rt) not in _fold(album):
            return False
        if (tt := params.get("title")) and _fold(tt) not in _fold(title):
            return False
        barcodes = {_digits(x) for x in _as_list(item.get("barcode"))}
        if (b := params.get("barcode")) and _digits(b) not in barcodes:
            return False
        catno = _fold(str(item.get("catno") or "")).replace(" ", "")
        if (c := params.get("catno")) and _fold(c).replace(" ", "") != catno:
            return False
        if (lab := params.get("label")) and not any(_fold(lab) == _fold(x) for x in labels):
            return False
        if (y := params.get("year")) and str(item.get("year") or "") != y:
            return False
        if (g := params.get("genre")) and _fold(g) not in {_fold(x) for x in item.get("genre", [])}:
            return False
        if q := params.get("q"):
            hay = _fold(
                " ".join(
                    [title, *labels, str(item.get("catno") or ""), *_as_list(item.get("barcode"))]
                )
            )
            if not all(word in hay for word in _fold(q).split()):
                return False
        return True

    def search(self, params: dict[str, str]) -> dict[str, Any]:
        hits = [i for i in self._all_results() if self._matches(i, params)]
        per_page = max(1, min(100, int(params.get("per_page") or 50)))
        page = max(1, int(params.get("page") or 1))
        pages = max(1, math.ceil(len(hits) / per_page))
        chunk = hits[(page - 1) * per_page : page * per_page]
        return {
            "pagination": {
                "per_page": per_page,
                "pages": pages,
                "page": page,
                "urls": {},
                "items": len(hits),
            },
            "results": chunk,
        }

    def release(self, rid: int) -> dict[str, Any] | None:
        with self._lock:
            if rid in self._added:
                return self._added[rid]["release"]
        file = self.corpus_dir / "releases" / f"{rid}.json"
        if file.is_file():
            data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
            return data
        return None

    def corpus_file(self, path: str, raw_query: str) -> Any | None:
        rel = path.strip("/")
        if not rel or ".." in rel.split("/"):
            return None
        names = (
            [f"{rel}_{raw_query}.json", f"{rel}_{quote(raw_query, safe='=&')}.json"]
            if (raw_query)
            else []
        )
        names.append(f"{rel}.json")
        for name in names:
            file = self.corpus_dir / name
            if file.is_file() and self.corpus_dir in file.resolve().parents:
                return json.loads(file.read_text(encoding="utf-8"))
        return None

    # ------------------------------------------------------------------ limits

    def client_key(self, token: str | None, address: str) -> str:
        return f"token:{token}" if token else f"addr:{address}"

    def take(self, key: str, limit: int) -> tuple[bool, int, float]:
        """(allowed, used, retry_after) for one request by ``key``."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= limit:
                return False, len(hits), max(0.0, hits[0] + self.window_s - now)
            hits.append(now)
            return True, len(hits), 0.0

    def pop_failure(self) -> tuple[int, float | None] | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None


def _token_of(header: str | None) -> str | None:
    if not header:
        return None
    m = re.match(r"\s*Discogs\s+token=(\S+)", header)
    return m.group(1) if m else None


def _make_handler(fake: FakeDiscogs) -> type[JsonHandler]:
    class Handler(JsonHandler):
        server_version = "FakeDiscogs/1.0"
        record: RecordedRequest | None = None

        def do_POST(self) -> None:
            self.record = None
            path = urlsplit(self.path).path
            try:
                body = self._body()
                if path == "/_fake/releases":
                    self._send(201, {"id": fake.add_release(**body)})
                elif path == "/_fake/fail_next":
                    fake.fail_next(
                        int(body.get("n", 1)),
                        int(body.get("status", 500)),
                        body.get("retry_after"),
                    )
                    self._send(200, {"ok": True})
                elif path == "/_fake/reset":
                    fake.reset()
                    self._send(200, {"ok": True})
                else:
                    self._send(405, {"message": "Method not allowed."})
            except (TypeError, ValueError) as exc:
                self._send(400, {"message": f"Bad control request: {exc}"})

        def do_GET(self) -> None:
            self.record = None
            split = urlsplit(self.path)
            path = split.path.rstrip("/") or "/"
            params = {k: v[0] for k, v in parse_qs(split.query).items()}
            if path == "/_fake/requests":
                self._send(200, [asdict(r) for r in fake.requests])
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.record = RecordedRequest("GET", path, params, headers)
            with fake._lock:
                fake.requests.append(self.record)
            self._handle(path, split.query, params, headers)

        def _handle(
            self, path: str, raw_query: str, params: dict[str, str], headers: dict[str, str]
        ) -> int:
            if not headers.get("user-agent", "").strip():
                self._send(403, {"message": "Please set a User-Agent header."})
                return 403
            token = _token_of(headers.get("authorization"))
            limit = fake.rate_with_token if token else fake.rate_without_token
            allowed, used, wait = fake.take(fake.client_key(token, self.client_address[0]), limit)
            rl = {
                "X-Discogs-Ratelimit": str(limit),
                "X-Discogs-Ratelimit-Used": str(used),
                "X-Discogs-Ratelimit-Remaining": str(max(0, limit - used)),
            }
            if not allowed:
                rl["Retry-After"] = str(max(1, math.ceil(wait)))
                self._send(429, {"message": "You are making requests too quickly."}, rl)
                return 429
            failure = fake.pop_failure()
            if failure is not None:
                status, retry_after = failure
                if retry_after is not None:
                    rl["Retry-After"] = str(retry_after)
                self._send(status, {"message": "Fake failure."}, rl)
                return status
            if token is not None and fake.token is not None and token != fake.token:
                self._send(
                    401,
                    {
                        "message": "Invalid consumer token. Please register an app "
                        "before making API requests."
                    },
                    rl,
                )
                return 401
            if path == "/database/search":
                if token is None and fake.search_requires_auth:
                    self._send(
                        401, {"message": "You must authenticate to access this resource."}, rl
                    )
                    return 401
                try:
                    self._send(200, fake.search(params), rl)
                except ValueError:
                    self._send(400, {"message": "Bad request."}, rl)
                    return 400
                return 200
            m = re.fullmatch(r"/releases/(\d+)", path)
            if m:
                release = fake.release(int(m.group(1)))
                if release is None:
                    self._send(404, {"message": "Release not found."}, rl)
                    return 404
                self._send(200, release, rl)
                return 200
            data = fake.corpus_file(path, raw_query)
            if data is None:
                self._send(404, {"message": "The requested resource was not found."}, rl)
                return 404
            self._send(200, data, rl)
            return 200

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Discogs API on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="the only token accepted (any if unset)")
    parser.add_argument("--rate-with-token", type=int, default=60)
    parser.add_argument("--rate-without-token", type=int, default=25)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--allow-anonymous-search", action="store_true")
    parser.add_argument("--corpus", type=Path, default=None)
    args = parser.parse_args(argv)
    fake = FakeDiscogs(
        args.corpus,
        token=args.token,
        rate_with_token=args.rate_with_token,
        rate_without_token=args.rate_without_token,
        window_s=args.window_s,
        search_requires_auth=not args.allow_anonymous_search,
        host=args.host,
        port=args.port,
    )
    print(fake.url, flush=True)
    fake.serve_until_interrupted()


if __name__ == "__main__":
    main()
