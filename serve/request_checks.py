"""What the server checks before FastAPI parses a body, and how it writes every error body.

Refused before parsing, each with a message saying which rule and what was sent:
  413 a body over `max_body_bytes`; 415 a Content-Type other than JSON (application/json or
  */*+json; none at all is read as JSON); 400 bytes that are not UTF-8; 422 JSON that Python would
  read but JSON does not allow or JSON cannot echo back: NaN, Infinity, -Infinity, and numbers
  beyond float range such as 1e999.
Error bodies are {"error": one line} (+ pydantic's "detail" for 422s), ASCII-only JSON; nothing
a client sent can make the encoder fail (a non-finite float in an echoed input is written as a
string).
"""

from __future__ import annotations

import json
import math

import fastapi
from fastapi import responses, routing


class AsciiJSONResponse(responses.JSONResponse):
    """JSON with non-ASCII escaped: text echoed from a request (pydantic's error 'input', a
    lone surrogate included) can always be encoded."""

    def render(self, content) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def error(status: int, message: str, headers: dict | None = None) -> responses.JSONResponse:
    return AsciiJSONResponse({"error": message}, status_code=status, headers=headers)


def finite(value):
    """`value` (JSON-like) with every non-finite float replaced by its repr ('nan', 'inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


class _NotJSONNumber(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NotJSONNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSONNumber(f"{text[:40]} is beyond the float range")
    return value


def non_json_number(body: bytes) -> str | None:
    """The reason `body` holds a number JSON cannot carry (NaN, Infinity, 1e999), else None.

    Malformed JSON is left to FastAPI, whose error names the position.
    """
    try:
        json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJSONNumber as reason:
        return str(reason)
    except ValueError:  # JSONDecodeError and friends: FastAPI reports them
        return None
    return None


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return not media_type or media_type == "application/json" or media_type.endswith("+json")


class CheckedBodyRoute(routing.APIRoute):
    """Applies the module docstring's checks to every request with a body, in that order."""

    max_body_bytes = 16384

    def get_route_handler(self):
        handler = super().get_route_handler()
        limit = self.max_body_bytes

        async def checked(request: fastapi.Request):
            if request.method in ("GET", "HEAD"):
                return await handler(request)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return error(413, f"request body: expected at most {limit} bytes, got {declared}")
            content_type = request.headers.get("content-type", "")
            if declared == "0" and not content_type:  # a bare POST (e.g. /admin/reload)
                return await handler(request)
            if not _is_json(content_type):
                return error(
                    415,
                    f"request body: expected Content-Type application/json, got "
                    f"{content_type[:80]!r}",
                )
            body = await request.body()  # cached: the handler below reads it again
            if len(body) > limit:
                return error(413, f"request body: expected at most {limit} bytes, got {len(body)}")
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as decode_error:
                return error(
                    400,
                    f"request body: expected UTF-8 JSON, got byte "
                    f"0x{body[decode_error.start]:02x} at position "
                    f"{decode_error.start}",
                )
            reason = non_json_number(body)
            if reason is not None:
                return error(422, f"body: invalid JSON: {reason} (JSON numbers are finite)")
            return await handler(request)

        return checked


def describe(errors) -> str:
    """One line from pydantic's error list: 'body.k: Input should be ... (got 0)'."""
    parts = []
    for entry in errors:
        location = [str(part) for part in entry.get("loc", ())]
        if entry.get("type") == "json_invalid":
            reason = (entry.get("ctx") or {}).get("error", "")
            parts.append(f"body: invalid JSON at character {location[-1]}: {reason}")
            continue
        got = entry.get("input")
        shown = f" (got {got!r:.60})" if got is not None and entry.get("type") != "missing" else ""
        parts.append(f"{'.'.join(location)}: {entry.get('msg', 'invalid')}{shown}")
    return "; ".join(parts)
