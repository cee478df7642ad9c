"""The server's front door: a plain ASGI middleware that every request passes first.

- Sheds load before any work: a POST /search that would be refused anyway (shutting down, the
  queue full, or, with a deadline, the queue ahead too long to answer in time) gets its 503 here,
  without JSON parsing, validation or tokenization, so an overloaded server spends almost nothing
  on the requests it refuses (a pydantic round trip per refused request starved the event loop
  at concurrency 400).
- Starts each request's deadline clock on arrival (`scope['state']['arrived']`), before the body
  is parsed.
- Counts every answer in lateint_requests_total (and the time from arrival to answer of every
  search in lateint_search_latency_seconds, by status), and answers an exception that escapes
  the app with a JSON 500 (counted too).
- While draining after SIGTERM, adds `Connection: close` to every response.
"""

from __future__ import annotations

import json
import logging
import time

RETRY_AFTER_SECONDS = 1


def endpoint_label(path: str, endpoints) -> str:
    if path in endpoints:
        return path
    return "/images/{image_id}" if path.startswith("/images/") else "other"


class FrontDoor:
    """ASGI middleware; `app.add_middleware(FrontDoor, shed=..., metrics=..., ...)`."""

    def __init__(self, app, shed, metrics, readiness, endpoints):
        """shed(now) -> a reason to refuse a search now, or None; metrics: ServerMetrics;
        readiness: lateint.serve.health.Readiness (its `draining` flag)."""
        self.app, self.shed, self.metrics = app, shed, metrics
        self.readiness, self.endpoints = readiness, tuple(endpoints)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived = time.perf_counter()
        scope.setdefault("state", {})["arrived"] = arrived
        label = endpoint_label(scope["path"], self.endpoints)
        status = {"code": 500, "started": False}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                if self.readiness.draining:
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != b"connection"
                    ]
                    message = dict(message, headers=headers + [(b"connection", b"close")])
            await send(message)

        try:
            reason = None
            if label == "/search" and scope["method"] == "POST":
                reason = self.shed(arrived)
            if reason is not None:
                await _drain_body(receive)
                await _json_response(
                    counted_send,
                    503,
                    {"error": reason},
                    [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
                )
            else:
                await self.app(scope, receive, counted_send)
        except Exception:
            logging.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if not status["started"]:
                await _json_response(
                    counted_send, 500, {"error": "internal error (details in the server log)"}
                )
            status["code"] = 500
        finally:
            self.metrics.observe_request(label, status["code"])
            if label == "/search":
                self.metrics.observe_search_answer(status["code"], time.perf_counter() - arrived)


async def _drain_body(receive) -> None:
    """Reads the request body to its end, so the connection stays usable for the next one."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _json_response(send, status: int, body: dict, headers=()) -> None:
    content = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
