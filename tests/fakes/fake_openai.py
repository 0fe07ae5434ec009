"""A fake OpenAI-compatible chat-completions server on 127.0.0.1.

In a test::

    with FakeOpenAI(api_key="sk-test") as fake:
        fake.respond_with({"artist": "Trash80", "album": "Icarus"})
        llm = OpenAICompatibleLLM(fake.base_url, "sk-test", "gpt-4o-mini", 5.0, NoGuard(), None)

As a process (prints the base URL, ending in ``/v1``, on its first line)::

    python -m tests.fakes.fake_openai --port 0 --api-key sk-test --respond-json '{"a": 1}'

``POST /v1/chat/completions`` answers in the real response shape (``id``, ``object``,
``created``, ``model``, ``choices[0].message.content`` as a JSON *string*, ``usage``). It
checks what the real service would reject: no messages, a ``response_format`` that is not
``json_schema`` with a ``schema`` object, a missing/wrong Bearer key (when ``api_key`` is
set; the 401 echoes the key it got, as a careless server might, so that tests can check the
client never repeats it). The answer is programmable (:meth:`FakeOpenAI.respond_with`: a
dict, or a callable given the parsed request that returns a dict or a raw content string);
:meth:`fail_next` and :meth:`return_invalid_json` script failures; ``fenced = True`` wraps
the JSON in a Markdown fence as some local servers do; ``delay_s`` slows every answer.

Control endpoints for the subprocess mode: ``POST /_fake/respond_with`` (the answer object),
``POST /_fake/fail_next`` (``{"n", "status", "retry_after"}``), ``POST /_fake/invalid_json``
(``{"n"}``), ``POST /_fake/reset``, ``GET /_fake/requests``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.json_handler import FakeServer, JsonHandler

Answer = dict[str, Any] | Callable[[dict[str, Any]], "dict[str, Any] | str"]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names, values as received
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


def _error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class FakeOpenAI(FakeServer):
    def __init__(
        self,
        *,
        api_key: str | None = None,
        usage: tuple[int, int] = (1000, 100),
        model: str | None = None,
        delay_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.usage = usage
        self.model = model  # answer with this model name instead of echoing the request's
        self.delay_s = delay_s
        self.fenced = False
        self.requests: list[RecordedRequest] = []
        self._answer: Answer = {"answer": "fake"}
        self._fail: list[tuple[int, float | None]] = []
        self._invalid = 0
        self._counter = 0
        self._lock = threading.Lock()
        super().__init__(_make_handler(self), host, port)

    # ------------------------------------------------------------------ lifecycle


    @property
    def base_url(self) -> str:
        """What ``CONVEYOR_LLM_BASE_URL`` should be: the server URL + ``/v1``."""
        return f"{self.url}/v1"


    # ------------------------------------------------------------------ programming

    def respond_with(self, answer: Answer) -> None:
        """The JSON object to answer, or ``callable(request_body) -> dict | str``."""
        with self._lock:
            self._answer = answer

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        with self._lock:
            self._fail.extend([(status, retry_after)] * n)

    def return_invalid_json(self, n: int = 1) -> None:
        """The next ``n`` successful answers carry content that is not JSON."""
        with self._lock:
            self._invalid += n

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._fail.clear()
            self._invalid = 0

    @property
    def completions(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------ answering

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "you must provide a model parameter"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must contain at least one message."
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in (
                "system",
                "user",
                "assistant",
                "developer",
                "tool",
            ):
                return "Invalid message in 'messages'."
        fmt = body.get("response_format")
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            return "response_format.type must be 'json_schema'."
        js = fmt.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
            return "response_format.json_schema.schema must be an object."
        if not isinstance(js.get("name"), str) or not js["name"]:
            return "response_format.json_schema.name is required."
        return None

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            answer = self._answer
            invalid = self._invalid > 0
            if invalid:
                self._invalid -= 1
            self._counter += 1
            n = self._counter
        if invalid:
            content = "Sure! Here is the data you asked for: {artist: Trash80,"
        else:
            value = answer(body) if callable(answer) else answer
            content = value if isinstance(value, str) else json.dumps(value)
            if self.fenced:
                content = f"```json\n{content}\n```"
        prompt_tokens, completion_tokens = self.usage
        return {
            "id": f"chatcmpl-fake{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def pop_failure(self) -> tuple[int, float | None] | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None


def _make_handler(fake: FakeOpenAI) -> type[JsonHandler]:
    class Handler(JsonHandler):
        server_version = "FakeOpenAI/1.0"
        record: RecordedRequest | None = None

        def do_GET(self) -> None:
            self.record = None
            path = urlsplit(self.path).path
            if path == "/_fake/requests":
                self._send(200, [asdict(r) for r in fake.requests])
            elif path == "/v1/models":
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": fake.model or "gpt-4o-mini",
                                "object": "model",
                                "owned_by": "fake",
                            }
                        ],
                    },
                )
            else:
                self._send(404, _error(f"Unknown path {path}", "invalid_request_error"))

        def do_POST(self) -> None:
            self.record = None
            path = urlsplit(self.path).path
            raw = self._raw_body()
            try:
                body: Any = json.loads(raw) if raw.strip() else None
            except ValueError:
                body = None
                parse_failed = True
            else:
                parse_failed = False
            if path.startswith("/_fake/"):
                self._control(path, body)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.record = RecordedRequest("POST", path, headers, body)
            with fake._lock:
                fake.requests.append(self.record)
            self._complete(path, headers, body, parse_failed)

        def _control(self, path: str, body: Any) -> None:
            body = body if isinstance(body, dict) else {}
            if path == "/_fake/respond_with":
                fake.respond_with(body)
            elif path == "/_fake/fail_next":
                fake.fail_next(
                    int(body.get("n", 1)), int(body.get("status", 500)), body.get("retry_after")
                )
            elif path == "/_fake/invalid_json":
                fake.return_invalid_json(int(body.get("n", 1)))
            elif path == "/_fake/reset":
                fake.reset()
            else:
                self._send(404, {"ok": False})
                return
            self._send(200, {"ok": True})

        def _complete(
            self, path: str, headers: dict[str, str], body: Any, parse_failed: bool
        ) -> int:
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if path != "/v1/chat/completions":
                self._send(404, _error(f"Unknown path {path}", "invalid_request_error"))
                return 404
            if fake.api_key is not None:
                auth = headers.get("authorization", "")
                if not auth:
                    self._send(
                        401, _error("You didn't provide an API key.", "invalid_request_error")
                    )
                    return 401
                given = auth.removeprefix("Bearer ").strip()
                if given != fake.api_key:
                    self._send(
                        401,
                        _error(
                            f"Incorrect API key provided: {given}.",
                            "invalid_request_error",
                            "invalid_api_key",
                        ),
                    )
                    return 401
            failure = fake.pop_failure()
            if failure is not None:
                status, retry_after = failure
                extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                self._send(status, _error("Fake failure.", "server_error"), extra)
                return status
            if parse_failed:
                self._send(
                    400, _error("We could not parse the JSON body.", "invalid_request_error")
                )
                return 400
            problem = fake._validate(body)
            if problem is not None:
                self._send(400, _error(problem, "invalid_request_error"))
                return 400
            try:
                answer = fake.completion(body)
            except Exception as exc:  # a test's callable blew up: say so, don't hang
                self._send(500, _error(f"fake answer failed: {exc!r}", "server_error"))
                return 500
            self._send(200, answer)
            return 200

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--respond-json", default=None, help="the default answer (JSON object)")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--completion-tokens", type=int, default=100)
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        api_key=args.api_key,
        model=args.model,
        usage=(args.prompt_tokens, args.completion_tokens),
        host=args.host,
        port=args.port,
    )
    if args.respond_json:
        fake.respond_with(json.loads(args.respond_json))
    print(fake.base_url, flush=True)
    fake.serve_until_interrupted()


if __name__ == "__main__":
    main()
