"""The HTTP JSON API over one Searcher (FastAPI): /search, /healthz, /livez, /metrics, the
demo page.

    app = create_app(searcher, ServerSettings(max_batch=16, max_wait_ms=5, max_queue=256))

POST /search {query, k, options: {n, K, first_stage}} -> {query, results: [{id, score, rank,
...}], timings_ms: {tokenize, text_tower, first_stage, maxsim, gather, joint, total, queue},
settings, batch_size, candidates}. Requests are prepared (checked, tokenized) in the event loop,
then queued to one MicroBatcher whose worker thread owns the Searcher. Errors (JSON bodies, all
counted in lateint_requests_total): 400 unreadable body (not UTF-8), 413 body too large, 415 not
JSON, 422 invalid request (the message names the field, the bound and the value; NaN, Infinity and
1e999 included), 503 queue full, overloaded (it could not be answered within
`request_timeout_ms`; shed by lateint.serve.front_door before the body is parsed), past its deadline
(counted from arrival), or shutting down (with Retry-After), 500 a failed batch
(naming the array and image range for a damaged store, never a server path; details go to the
log). /healthz is readiness (lateint.serve.health), /livez liveness. No /docs: Swagger UI would load from
a CDN; /openapi.json is the schema.

POST /admin/reload (loopback clients only, else 403) loads the INDEX's newest generation
(lateint.index.add / delete / compact) while requests keep being answered by the old one, then swaps;
every response carries the generation that answered it (header X-Index-Generation, and field
'generation' in /search and /healthz bodies).
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from typing import Annotated, Literal

import fastapi
from fastapi import encoders, exceptions, responses
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from lateint.serve import demo, multihost
from lateint.serve.batcher import BatcherClosed, DeadlineExceeded, MicroBatcher, QueueFull
from lateint.serve.front_door import FrontDoor
from lateint.serve.health import PROBE_QUERY, Readiness, public_reason
from lateint.serve.prometheus import ServerMetrics
from lateint.serve.request_checks import (
    AsciiJSONResponse,
    CheckedBodyRoute,
    describe,
    error,
    finite,
)
from lateint.serve.searcher import Searcher

ENDPOINTS = ("/search", "/healthz", "/livez", "/metrics", "/", "/openapi.json", "/admin/reload")
GENERATION_HEADER = "X-Index-Generation"
LOOPBACK = ("127.0.0.1", "::1")
RETRY = {"Retry-After": "1"}


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    max_batch: int = 16  # queries per micro-batch (1: no batching)
    max_wait_ms: float = 5.0  # how long the oldest request waits for a batch to fill
    max_queue: int = 256  # waiting requests beyond which /search answers 503
    max_query_chars: int = 512  # longer queries are refused (tokens past the largest length
    # bucket are cut anyway)
    max_body_bytes: int = 16384
    images_dir: str | None = None  # the corpus's images/ (PNG per image id) for the demo
    request_timeout_ms: float = 2000.0  # a search not answerable by then gets a fast 503
    # (0: no deadline, admission by queue length only)
    stuck_seconds: float = 30.0  # a batch running longer makes /healthz answer 503
    hold_file: str | None = None  # tests only: while this file exists the batch worker takes
    # no batch (lateint.serve.batcher's `hold`); None: never held


def _whole_number(value):
    """JSON integers, and numbers like 5.0 (JSON Schema's 'integer'); no strings or booleans.

    A model-level 'before' validator rather than an Annotated one: the latter would hide the
    ge/le bounds from the OpenAPI schema.
    """
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _count(low: int, high: int):
    return Annotated[int, Field(ge=low, le=high)]


def _models(searcher: Searcher, settings: ServerSettings):
    """Request and response models whose bounds come from the searcher's buckets."""
    buckets = searcher.buckets
    stage_names = Literal[tuple(searcher.first_stage_names)]

    class SearchOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: _count(1, buckets.max_n) | None = Field(
            None, description="first-stage candidates (default: max(default_n, K))"
        )
        K: _count(1, buckets.max_K) | None = Field(
            None, description="candidates reranked by the joint layers (K <= n)"
        )
        first_stage: stage_names | None = Field(
            None, description=f"default: {searcher.default_first_stage!r}"
        )

        _check_counts = field_validator("n", "K", mode="before")(_whole_number)

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: StrictStr = Field(min_length=1, max_length=settings.max_query_chars)
        k: _count(1, buckets.max_K) = Field(10, title="k", description="results returned (k <= K)")
        options: SearchOptions = Field(default_factory=SearchOptions)

        _check_k = field_validator("k", mode="before")(_whole_number)

        @field_validator("query")
        @classmethod
        def _has_text(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("expected text, got an empty or whitespace-only string")
            return value

    class Hit(BaseModel):
        id: str
        score: float
        rank: int
        index: int
        maxsim: float
        image_url: str

    class Timings(BaseModel):
        tokenize: float
        text_tower: float
        first_stage: float
        maxsim: float
        gather: float
        joint: float
        total: float
        queue: float

    class Settings(BaseModel):
        k: int
        n: int
        K: int
        first_stage: str

    class SearchResponse(BaseModel):
        query: str
        results: list[Hit]
        timings_ms: Timings
        settings: Settings
        batch_size: int
        candidates: int
        generation: int

    return SearchRequest, SearchResponse


class _ErrorBody(BaseModel):
    error: str


def create_app(searcher: Searcher, settings: ServerSettings = ServerSettings()) -> fastapi.FastAPI:
    """The ASGI app; the micro-batcher's worker starts and stops with the app's lifespan."""
    SearchRequest, SearchResponse = _models(searcher, settings)

    def process(items):
        """Runs in the batcher's worker: each result with the time its batch started."""
        started = time.perf_counter()
        return [(result, started) for result in searcher.run(items)]

    metrics = ServerMetrics(lambda: batcher.depth, lambda: batcher.in_flight)
    hold = None if settings.hold_file is None else (lambda: os.path.exists(settings.hold_file))
    batcher = MicroBatcher(
        process,
        settings.max_batch,
        settings.max_wait_ms,
        settings.max_queue,
        on_batch=lambda info: metrics.observe_batch(info.size),
        hold=hold,
    )
    readiness = Readiness(
        batcher, lambda: searcher.prepare(PROBE_QUERY, 1, None, None, None), settings.stuck_seconds
    )
    timeout = settings.request_timeout_ms / 1e3 if settings.request_timeout_ms > 0 else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)  # answers every queued request first

    app = fastapi.FastAPI(
        title="lateint search",
        version="1",
        description="Text-to-image retrieval with precomputed late interaction: first stage, "
        "exact MaxSim on stored concepts, joint layers over the top K.",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
        docs_url=None,
        redoc_url=None,
    )
    app.state.searcher, app.state.batcher, app.state.metrics = searcher, batcher, metrics
    app.state.readiness = readiness  # lateint.serve.main sets readiness.draining on SIGTERM
    router = fastapi.APIRouter(
        route_class=type(
            "CheckedBodyRoute", (CheckedBodyRoute,), {"max_body_bytes": settings.max_body_bytes}
        )
    )
    error_responses = {
        status: {"model": _ErrorBody, "description": text}
        for status, text in (
            (400, "body not UTF-8"),
            (413, "body too large"),
            (415, "body not JSON"),
            (422, "invalid request"),
            (500, "the batch failed"),
            (503, "queue full, overloaded, past its deadline, or shutting down"),
        )
    }

    @app.exception_handler(exceptions.RequestValidationError)
    async def invalid_request(request, validation_error):
        errors = finite(
            encoders.jsonable_encoder(validation_error.errors(), exclude={"ctx", "url"})
        )
        return AsciiJSONResponse(
            {"error": describe(validation_error.errors()), "detail": errors}, status_code=422
        )

    def shed(now: float) -> str | None:
        """Why a search arriving now is refused before its body is read (None: let it in)."""
        refusal = batcher.refusal(now, None if timeout is None else now + timeout)
        return None if refusal is None else refusal[1]

    # Counts every answer, sheds before parsing, starts the deadline clock on arrival.
    app.add_middleware(
        FrontDoor, shed=shed, metrics=metrics, readiness=readiness, endpoints=ENDPOINTS
    )

    @app.middleware("http")
    async def tag_generation(request: fastapi.Request, call_next):
        response = await call_next(request)  # /search sets the header of its own answer
        response.headers.setdefault(GENERATION_HEADER, str(searcher.generation))
        return response

    @router.post("/search", response_model=SearchResponse, responses=error_responses)
    async def search(request: SearchRequest, http_request: fastapi.Request):
        """Ranked images for a text query, with per-stage timings in milliseconds."""
        began = getattr(http_request.state, "arrived", None) or time.perf_counter()
        options = request.options
        try:
            prepared = searcher.prepare(
                request.query, request.k, options.n, options.K, options.first_stage
            )
        except ValueError as invalid:
            return error(422, str(invalid))
        submitted = time.perf_counter()
        deadline = None if timeout is None else began + timeout
        try:
            future = batcher.submit(prepared, deadline)
        except (QueueFull, BatcherClosed) as refusal:
            return error(503, str(refusal), headers=RETRY)
        try:
            waiting = asyncio.wrap_future(future)
            if deadline is not None:  # past it, answer now; the worker skips a cancelled item
                waiting = asyncio.wait_for(waiting, max(0.0, deadline - time.perf_counter()))
            result, started = await waiting
        except (asyncio.TimeoutError, DeadlineExceeded):
            future.cancel()
            return error(
                503,
                f"not answered within request_timeout_ms="
                f"{settings.request_timeout_ms:g}; retry later",
                headers=RETRY,
            )
        except multihost.ProcessGroupBroken as failure:  # a host is gone: not this one's fault
            return error(503, public_reason(failure), headers=RETRY)
        except Exception as failure:  # the whole batch failed: not the request's fault
            logging.error(
                "search %r failed: %s: %s", request.query[:80], type(failure).__name__, failure
            )
            return error(500, public_reason(failure))
        queue_ms = (started - submitted) * 1e3
        metrics.observe_search(result.timings_ms, queue_ms / 1e3, time.perf_counter() - began)
        return AsciiJSONResponse(
            {
                "query": result.query,
                "results": [
                    dict(dataclasses.asdict(hit), image_url=demo.image_url(hit.id))
                    for hit in result.hits
                ],
                "timings_ms": dict(result.timings_ms, queue=queue_ms),
                "settings": result.settings.to_dict(),
                "batch_size": result.batch_size,
                "candidates": result.candidates,
                "generation": result.generation,
            },
            headers={GENERATION_HEADER: str(result.generation)},
        )

    reload_lock = asyncio.Lock()

    @router.post(
        "/admin/reload", responses={403: {"model": _ErrorBody}, 500: {"model": _ErrorBody}}
    )
    async def reload(request: fastapi.Request):
        """Serves the INDEX's newest generation; loopback clients only."""
        if request.client is None or request.client.host not in LOOPBACK:
            return error(403, "/admin/reload: only loopback clients may reload")
        async with reload_lock:
            try:
                answer = await asyncio.to_thread(searcher.reload)
            except Exception as failure:  # the served generation stays
                return error(
                    500,
                    f"reload failed, still serving generation "
                    f"{searcher.generation}: {type(failure).__name__}: {failure}",
                )
        return AsciiJSONResponse(answer, headers={GENERATION_HEADER: str(answer["generation"])})

    @router.get("/livez")
    async def livez():
        """Liveness: 200 while the process and its event loop run (also while draining)."""
        return {"status": "alive"}

    @router.get("/healthz", responses={503: {"model": _ErrorBody}})
    async def healthz():
        """Readiness (lateint.serve.health): 200 and what this server serves when a search can be
        answered now; 503 with every reason otherwise."""
        reasons = await readiness.check()
        if reasons:
            return AsciiJSONResponse(
                {"error": "; ".join(reasons), "status": "unavailable", "reasons": reasons},
                status_code=503,
                headers=RETRY,
            )
        buckets, view = searcher.buckets, searcher.view  # one generation for the whole body
        return AsciiJSONResponse(
            {
                "status": "ok",
                "images": view.num_images,
                "generation": view.generation,
                "model_step": int(searcher.meta["step"]),
                "fingerprint": searcher.meta["fingerprint"],
                "first_stages": list(searcher.first_stage_names),
                "default_first_stage": searcher.default_first_stage,
                "limits": {
                    "max_k": buckets.max_K,
                    "max_K": buckets.max_K,
                    "max_n": buckets.max_n,
                    "default_n": buckets.default_n,
                    "default_K": buckets.default_K,
                    "max_query_chars": settings.max_query_chars,
                },
                "queue_depth": batcher.depth,
                "compile_seconds": searcher.compile_seconds,
                "compile": searcher.compiled.progress(),
                "request_timeout_ms": settings.request_timeout_ms,
            },
            headers={GENERATION_HEADER: str(view.generation)},
        )

    @router.get("/metrics", response_class=responses.PlainTextResponse)
    async def prometheus_metrics():
        """Prometheus text format."""
        body, content_type = metrics.exposition()
        return responses.Response(body, media_type=content_type)

    app.include_router(router)
    demo.add_routes(app, searcher.image_ids, settings.images_dir)
    return app
