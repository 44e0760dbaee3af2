"""The ASGI application of ``varattn serve``: the explorer page and its JSON API (Starlette, under uvicorn).

=================================  ==========================================================================
``GET /``                          the page (``static/index.html``, its script and style sheet in ``/static``)
``GET /api/runs``                  the runs served: name, task, mode, methods, ...
``GET /api/examples?run=NAME``     validation pairs (translation) or easy-VQA test questions (VQA)
``GET /api/image?run=NAME&index=K``  example image K of a VQA run, as PNG
``POST /api/translate``            ``{run, src, beam?, topk?, alpha?, eos_norm?, threshold?, alternatives?}``
``POST /api/align``                ``{run, src | src_tokens, tgt | tgt_tokens, threshold?, alternatives?}``
``POST /api/score``                ``{run, src, tgt}``: exact log p(y | x), ELBO, perplexity
``POST /api/answer``               JSON ``{run, question, example, answer?}`` or a form with ``image`` (a file)
=================================  ==========================================================================

Every answer is JSON; an error is ``{"error": "..."}`` with a 4xx status (503 when the queue is full, 500
for a fault of the server, logged there and never sent as a traceback). Requests name runs, never files.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from varattn.errors import VarattnError
from varattn.serve import explore
from varattn.serve.limits import BadRequest, Limits, field, pieces_field, text_field

log = logging.getLogger("varattn")
STATIC = Path(__file__).parent / "static"
#: what the page may load: its own files only (no inline script, no other origin)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Gate:
    """At most ``concurrency`` requests compute at once; up to ``max_queue`` more wait (in threads) for their
    turn, and one more than that is refused at once with 503, so a burst queues without exhausting memory."""

    def __init__(self, concurrency: int, max_queue: int):
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._inside = 0
        self.capacity = concurrency + max_queue

    @property
    def inside(self) -> int:
        """Requests computing or waiting now."""
        return self._inside

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        with self._lock:
            if self._inside >= self.capacity:
                raise BadRequest("the server is busy: too many requests are waiting; try again shortly", 503)
            self._inside += 1
        try:
            return await run_in_threadpool(self._call, fn, *args)
        finally:
            with self._lock:
                self._inside -= 1

    def _call(self, fn, *args):
        with self._slots:
            return fn(*args)


class Explorer:
    """The state every request shares: the runs (loaded once), the limits and the gate."""

    def __init__(self, runs: list[explore.ServedRun], limits: Limits):
        self.runs = {run.name: run for run in runs}
        self.limits = limits
        self.gate = Gate(limits.concurrency, limits.max_queue)

    def run(self, name: Any, task: str | None = None) -> explore.ServedRun:
        if not isinstance(name, str):
            raise BadRequest("field 'run' must name a run (GET /api/runs lists them)")
        if name not in self.runs:
            raise BadRequest(f"unknown run {name[:80]!r}; runs: {', '.join(self.runs)}", 404)
        run = self.runs[name]
        if task is not None and run.task != task:
            raise BadRequest(f"run {name!r} is a {run.task} run; this request needs a {task} run")
        return run

    async def compute(self, run: explore.ServedRun, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` in a worker thread, in the gate's turn, holding the run's lock (one model, one user)."""
        def locked():
            with run.lock:
                return fn(*args)

        return await self.gate.run(locked)


class AllowedHosts:
    """ASGI middleware: a request whose ``Host`` header (without its port) is not one of ``hosts`` gets a JSON 400."""

    def __init__(self, app, hosts: list[str]):
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "").lower()
            name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":")[0]
            if name not in self.hosts:
                await _error(f"this server answers requests for {', '.join(sorted(self.hosts))} only", 400)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _ok(content: Any) -> JSONResponse:
    return JSONResponse(content, headers=SECURITY_HEADERS)


def api(handler: Callable) -> Callable:
    """An endpoint whose every failure is a JSON error: 4xx for the client's, 500 (logged here) for ours."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, request.app.state.explorer)
        except BadRequest as exc:
            return _error(exc.message, exc.status)
        except VarattnError as exc:
            return _error(str(exc), 400)
        except Exception:
            log.exception("varattn serve: %s %s failed", request.method, request.url.path)
            return _error("internal error (the server's log has the details)", 500)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it grows beyond ``limit`` bytes (stated or streamed)."""
    stated = request.headers.get("content-length")
    if stated is not None and (not stated.isdigit() or int(stated) > limit):
        raise BadRequest(f"the request is larger than the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request is larger than the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request, limits: Limits) -> dict:
    data = await _body(request, limits.max_upload_bytes)
    if not data.strip():
        raise BadRequest("the request has no body: send a JSON object")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


# -- endpoints ----------------------------------------------------------------------------------------------
async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


@api
async def list_runs(request: Request, ex: Explorer) -> Response:
    return _ok({"runs": [run.describe() for run in ex.runs.values()],
                "limits": {"max_chars": ex.limits.max_chars, "max_tokens": ex.limits.max_tokens,
                           "max_upload_bytes": ex.limits.max_upload_bytes, "max_beam": ex.limits.max_beam,
                           "max_topk": ex.limits.max_topk, "max_alternatives": ex.limits.max_alternatives}})


@api
async def examples(request: Request, ex: Explorer) -> Response:
    run = ex.run(request.query_params.get("run"))
    items = await ex.compute(run, run.examples, ex.limits.examples)
    return _ok({"run": run.name, "task": run.task, "examples": items})


@api
async def image(request: Request, ex: Explorer) -> Response:
    run = ex.run(request.query_params.get("run"), "vqa")
    index = request.query_params.get("index", "")
    if not index.isdigit():
        raise BadRequest("give the example image's index: /api/image?run=NAME&index=K")
    await ex.compute(run, run.examples, ex.limits.examples)
    png = await ex.compute(run, run.example_png, int(index))
    return Response(png, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})


def _link_options(body: dict, limits: Limits) -> tuple[float | None, int]:
    threshold = field(body, "threshold", float, None, low=0.0, high=0.999999, nullable=True)
    alternatives = field(body, "alternatives", int, 3, low=1, high=limits.max_alternatives)
    return threshold, alternatives


@api
async def translate(request: Request, ex: Explorer) -> Response:
    from varattn.nmt.search import DEFAULT_ALPHA, DecodingOptions

    body = await _json(request, ex.limits)
    run = ex.run(body.get("run"), "nmt")
    src = text_field(body, "src", ex.limits)
    lim = ex.limits
    options = DecodingOptions(beam=field(body, "beam", int, 5, low=1, high=lim.max_beam),
                              topk=field(body, "topk", int, None, low=0, high=lim.max_topk, nullable=True),
                              alpha=field(body, "alpha", float, DEFAULT_ALPHA, low=0.0, high=10.0),
                              eos_norm=field(body, "eos_norm", float, 0.0, low=0.0, high=100.0))
    threshold, alternatives = _link_options(body, lim)
    result = await ex.compute(run, explore.translate, run, src, options, lim, threshold, alternatives)
    return _ok({"run": run.name, "mode": run.trained.mode, **result})


def _side(body: dict, name: str, limits: Limits) -> str | list[str]:
    pieces = pieces_field(body, f"{name}_tokens", limits)
    if pieces is not None:
        if name in body:
            raise BadRequest(f"give {name!r} or {name + '_tokens'!r}, not both")
        return pieces
    return text_field(body, name, limits)


@api
async def align(request: Request, ex: Explorer) -> Response:
    body = await _json(request, ex.limits)
    run = ex.run(body.get("run"), "nmt")
    src, tgt = _side(body, "src", ex.limits), _side(body, "tgt", ex.limits)
    threshold, alternatives = _link_options(body, ex.limits)
    result = await ex.compute(run, explore.analyse_pair, run, src, tgt, ex.limits, threshold, alternatives)
    return _ok({"run": run.name, "mode": run.trained.mode, **result})


@api
async def score(request: Request, ex: Explorer) -> Response:
    body = await _json(request, ex.limits)
    run = ex.run(body.get("run"), "nmt")
    src, tgt = text_field(body, "src", ex.limits), text_field(body, "tgt", ex.limits)
    result = await ex.compute(run, explore.score, run, src, tgt, ex.limits)
    return _ok({"run": run.name, "mode": run.trained.mode, **result})


async def _form(request: Request, limits: Limits) -> dict:
    """A multipart form: its text fields as strings and its one file, ``image``, as bytes."""
    data = await _body(request, limits.max_upload_bytes)

    async def stream():
        yield data

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8,
                                     max_part_size=limits.max_upload_bytes).parse()
    except MultiPartException as exc:
        raise BadRequest(f"the form cannot be read: {exc.message}") from None
    body: dict = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise BadRequest(f"the form's file must be called 'image', not {key[:40]!r}")
                body["image"] = await value.read()
            else:
                body[key] = value
    finally:
        await form.close()
    for key in ("example", "top"):
        if key in body:
            if not str(body[key]).isdigit():
                raise BadRequest(f"field {key!r} must be an integer")
            body[key] = int(body[key])
    return body


@api
async def answer(request: Request, ex: Explorer) -> Response:
    content_type = request.headers.get("content-type", "")
    form = content_type.startswith("multipart/form-data")
    body = await (_form(request, ex.limits) if form else _json(request, ex.limits))
    run = ex.run(body.get("run"), "vqa")
    question = text_field(body, "question", ex.limits)
    answer_to = field(body, "answer", str, None, nullable=True) or None
    if ("image" in body) == ("example" in body):
        raise BadRequest("give an example image (\"example\": K) or upload one (a form with the file 'image')")
    if "image" in body:
        if not isinstance(body["image"], bytes):
            raise BadRequest("upload the image as the file 'image' of a multipart form")
        picture = explore.decode_image(body["image"], ex.limits)
    else:
        k = field(body, "example", int, low=0)
        await ex.compute(run, run.examples, ex.limits.examples)
        picture = run.example_image(k)
    result = await ex.compute(run, explore.answer, run, question, picture, answer_to)
    return _ok({"run": run.name, "mode": run.trained.mode, "question": question, **result})


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    message = {404: "not found", 405: "method not allowed"}.get(status, getattr(exc, "detail", "error"))
    return _error(f"{message}: {request.method} {request.url.path}", status)


def create_app(runs: list[explore.ServedRun], limits: Limits | None = None,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The application serving ``runs`` (see :func:`varattn.serve.explore.load_runs`) within ``limits``.

    ``allowed_hosts``: the ``Host`` headers accepted (``varattn serve`` gives the loopback names when it binds
    to 127.0.0.1, which stops a web page elsewhere from reaching the server through DNS rebinding); None
    accepts any.
    """
    if not runs:
        raise VarattnError("give at least one run")
    routes = [
        Route("/", index),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/examples", examples, methods=["GET"]),
        Route("/api/image", image, methods=["GET"]),
        Route("/api/translate", translate, methods=["POST"]),
        Route("/api/align", align, methods=["POST"]),
        Route("/api/score", score, methods=["POST"]),
        Route("/api/answer", answer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(AllowedHosts, hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
    app.state.explorer = Explorer(runs, limits or Limits())
    return app
