"""The sandbox's HTTP API (aiohttp), served from any *backend* with the Sandbox methods.

Routes (docs/architecture.md, Sandbox): ``POST /v1/execute``, ``POST /v1/execute/batch``,
``DELETE /v1/sessions/{session_id}``, ``GET /healthz``, ``GET /metrics``.

A backend is any object with::

    async run(code, stdin="", timeout_s=None, session_id=None, *, queue_timeout_s=None) -> ExecResult
    async run_batch(list[ExecRequest]) -> list[ExecResult]          # in order
    async close_session(session_id) -> bool
    health() -> dict          # or async; must contain "status" ("ok" when serving)
    metrics_text() -> str     # or async; Prometheus text

:class:`tirl.sandbox.pool.Sandbox` is one; the Redis fleet's gateway is another. Request
validation lives here (pure: :func:`parse_request`), so every backend gets the same 4xx
errors: invalid JSON, wrong types, unknown fields, code/stdin over the size limit, negative
or huge timeouts — each naming the field. A request may carry ``queue_timeout_s``, the most
seconds it may wait for a slot (the caller's budget; ``infra_error``/``queue_timeout`` after
it); the backend's own default applies without it (the local pool waits for a slot as long
as it takes; the fleet gateway ``RedisBackend(queue_timeout_s=60)``). ``queue_timeout_s`` is
passed to ``run`` only when a request sets it, so backends without it keep working.

Clients that go away: :func:`serve` cancels a request's handler when its connection drops,
so a call whose client disconnected is cancelled — the pool kills its running child, or
takes it out of the queue before it starts (the fleet gateway withdraws a job no worker has
taken) — for ``/v1/execute`` and every call of a ``/v1/execute/batch``; each such
disconnect logs one line (logger ``tirl.sandbox.http``), never a traceback. Slow clients
hit read timeouts: a connection must deliver a request's headers within
``header_timeout_s`` of opening (or of its previous response; idle keep-alive connections
close then too), and the body within ``body_timeout_s`` of the headers (408 otherwise).

What it does not: authentication (serve on loopback, the default, or behind your own
proxy), or kill a call a fleet worker already runs when its client goes away (it runs to
its own time limit and its result is dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

from aiohttp import web

from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.types import ExecRequest, ExecResult

MAX_SESSION_ID = 256
_FIELDS = {"code", "stdin", "timeout_s", "session_id", "queue_timeout_s"}
HEADER_TIMEOUT_S = 30.0  # default: a request's headers must arrive within this (and idle keep-alive)
BODY_TIMEOUT_S = 60.0  # default: a request's body must arrive within this after its headers
MAX_QUEUE_TIMEOUT_S = 3600.0  # default: the largest queue_timeout_s a request may ask for

log = logging.getLogger("tirl.sandbox.http")


class RequestError(ValueError):
    """A bad request: ``field`` names the offending field, ``status`` is the HTTP code."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


def parse_request(obj: object, cfg: SandboxConfig, where: str = "",
                  max_queue_timeout_s: float = MAX_QUEUE_TIMEOUT_S) -> ExecRequest:
    """Validate one execute request (a decoded JSON object) against the limits in ``cfg``
    (and ``max_queue_timeout_s`` for the request's ``queue_timeout_s``)."""
    if not isinstance(obj, dict):
        raise RequestError(where or "body", f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise RequestError(where + unknown[0], f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")
    if "code" not in obj:
        raise RequestError(where + "code", "is required")
    code = obj["code"]
    if not isinstance(code, str):
        raise RequestError(where + "code", f"must be a string, got {type(code).__name__}")
    n = len(code.encode("utf-8", "surrogatepass"))
    if n > cfg.max_code_bytes:
        raise RequestError(where + "code", f"is {n} bytes; the limit is {cfg.max_code_bytes}", 413)
    stdin = obj.get("stdin", "")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise RequestError(where + "stdin", f"must be a string, got {type(stdin).__name__}")
    n = len(stdin.encode("utf-8", "surrogatepass"))
    if n > cfg.max_stdin_bytes:
        raise RequestError(where + "stdin", f"is {n} bytes; the limit is {cfg.max_stdin_bytes}", 413)
    timeout = obj.get("timeout_s")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise RequestError(where + "timeout_s", f"must be a number, got {type(timeout).__name__}")
        if not math.isfinite(timeout) or timeout <= 0 or timeout > cfg.max_timeout_s:
            raise RequestError(where + "timeout_s",
                               f"must be > 0 and <= {cfg.max_timeout_s:g} seconds, got {timeout!r}")
        timeout = float(timeout)
    queue_timeout = obj.get("queue_timeout_s")
    if queue_timeout is not None:
        if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, int | float):
            raise RequestError(where + "queue_timeout_s",
                               f"must be a number, got {type(queue_timeout).__name__}")
        if not math.isfinite(queue_timeout) or queue_timeout <= 0 or queue_timeout > max_queue_timeout_s:
            raise RequestError(where + "queue_timeout_s",
                               f"must be > 0 and <= {max_queue_timeout_s:g} seconds, got {queue_timeout!r}")
        queue_timeout = float(queue_timeout)
    sid = obj.get("session_id")
    if sid is not None:
        if not isinstance(sid, str):
            raise RequestError(where + "session_id", f"must be a string or null, got {type(sid).__name__}")
        if not sid or len(sid) > MAX_SESSION_ID or not sid.isprintable():
            raise RequestError(where + "session_id",
                               f"must be 1..{MAX_SESSION_ID} printable characters")
    return ExecRequest(code=code, stdin=stdin, timeout_s=timeout, session_id=sid,
                       queue_timeout_s=queue_timeout)


def parse_batch(obj: object, cfg: SandboxConfig,
                max_queue_timeout_s: float = MAX_QUEUE_TIMEOUT_S) -> list[ExecRequest]:
    if not isinstance(obj, dict):
        raise RequestError("body", f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"requests"})
    if unknown:
        raise RequestError(unknown[0], "unknown field (allowed: requests)")
    reqs = obj.get("requests")
    if not isinstance(reqs, list):
        raise RequestError("requests", "must be a list of execute requests")
    if len(reqs) > cfg.max_batch:
        raise RequestError("requests", f"has {len(reqs)} items; the limit is {cfg.max_batch}", 413)
    return [parse_request(r, cfg, f"requests[{i}].", max_queue_timeout_s) for i, r in enumerate(reqs)]


def _internal(err: Exception, session_id: str | None) -> ExecResult:
    return ExecResult("infra_error", session_id=session_id,
                      reason=f"internal: {type(err).__name__}: {err}")


def _error(err: RequestError) -> web.Response:
    resp = web.json_response({"error": err.message, "field": err.field}, status=err.status)
    if err.status == 408:
        resp.force_close()  # the rest of a stalled body must not be read as the next request
    return resp


class _ClientGone(Exception):
    """The client closed its connection before its request was answered."""


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def _json_body(request: web.Request, timeout_s: float) -> object:
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestError("body", f"not received within {timeout_s:g} s of the headers "
                           f"({request.content.total_bytes} of {request.content_length} bytes "
                           "came): send the whole body without pausing", 408) from None
    except (ConnectionError, asyncio.CancelledError) as err:
        if isinstance(err, asyncio.CancelledError) and not _client_gone(request):
            raise  # the server is stopping, not the client leaving
        log.warning("sandbox http: %s %s from %s: the client disconnected after %d of %s body "
                    "bytes; request dropped", request.method, request.path, request.remote,
                    request.content.total_bytes, request.content_length)
        if isinstance(err, asyncio.CancelledError):
            raise
        raise _ClientGone() from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError("body", f"invalid JSON: {err}") from None


def _log_abandoned(request: web.Request, n: int) -> None:
    log.warning("sandbox http: %s %s from %s: the client disconnected; cancelled its %d "
                "call(s) (running ones killed, queued ones never started)",
                request.method, request.path, request.remote, n)


def make_app(backend, cfg: SandboxConfig | None = None, *,
             body_timeout_s: float = BODY_TIMEOUT_S,
             max_queue_timeout_s: float = MAX_QUEUE_TIMEOUT_S) -> web.Application:
    """An aiohttp app serving ``backend`` (see the module docstring for the protocol).

    Limits come from ``cfg``, else ``backend.cfg``, else the defaults; ``body_timeout_s``
    bounds the time to receive a request body, ``max_queue_timeout_s`` the
    ``queue_timeout_s`` a request may ask for."""
    if not body_timeout_s > 0:
        raise ValueError(f"body_timeout_s must be > 0 seconds, got {body_timeout_s!r}")
    if not max_queue_timeout_s > 0:
        raise ValueError(f"max_queue_timeout_s must be > 0 seconds, got {max_queue_timeout_s!r}")
    cfg = cfg or getattr(backend, "cfg", None) or SandboxConfig()
    per_req = cfg.max_code_bytes + cfg.max_stdin_bytes + 1024
    app = web.Application(client_max_size=min(per_req * cfg.max_batch, 1 << 30))

    async def execute(request: web.Request) -> web.StreamResponse:
        try:
            req = parse_request(await _json_body(request, body_timeout_s), cfg,
                                max_queue_timeout_s=max_queue_timeout_s)
        except RequestError as err:
            return _error(err)
        except _ClientGone:
            return web.Response(status=400)  # nobody reads it
        kw = {} if req.queue_timeout_s is None else {"queue_timeout_s": req.queue_timeout_s}
        try:
            res = await backend.run(req.code, req.stdin, req.timeout_s, req.session_id, **kw)
        except asyncio.CancelledError:
            if _client_gone(request):
                _log_abandoned(request, 1)
            raise
        except Exception as err:  # a typed result even when the backend breaks
            res = _internal(err, req.session_id)
        return web.json_response(res.to_dict())

    async def execute_batch(request: web.Request) -> web.StreamResponse:
        try:
            reqs = parse_batch(await _json_body(request, body_timeout_s), cfg, max_queue_timeout_s)
        except RequestError as err:
            return _error(err)
        except _ClientGone:
            return web.Response(status=400)
        try:
            results = await backend.run_batch(reqs)
        except asyncio.CancelledError:
            if _client_gone(request):
                _log_abandoned(request, len(reqs))
            raise
        except Exception as err:
            results = [_internal(err, r.session_id) for r in reqs]
        return web.json_response({"results": [r.to_dict() for r in results]})

    async def delete_session(request: web.Request) -> web.Response:
        found = await backend.close_session(request.match_info["session_id"])
        return web.Response(status=204) if found else web.json_response(
            {"error": "no such session", "field": "session_id"}, status=404)

    async def healthz(request: web.Request) -> web.Response:
        h = await backend.health()
        return web.json_response(h, status=200 if h.get("status") == "ok" else 503)

    async def metrics(request: web.Request) -> web.Response:
        text = backend.metrics_text()
        return web.Response(text=text, content_type="text/plain")

    app.router.add_post("/v1/execute", execute)
    app.router.add_post("/v1/execute/batch", execute_batch)
    app.router.add_delete("/v1/sessions/{session_id}", delete_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(backend, host: str = "127.0.0.1", port: int = 8900,
                cfg: SandboxConfig | None = None, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                body_timeout_s: float = BODY_TIMEOUT_S,
                max_queue_timeout_s: float = MAX_QUEUE_TIMEOUT_S) -> web.AppRunner:
    """Start serving ``backend`` (returns the runner; ``await runner.cleanup()`` to stop).

    A client's disconnect cancels its request's handler (and so its calls);
    ``header_timeout_s``: a connection that has not delivered a request's complete headers
    this long after opening (or after its previous response) is closed — slow-header
    clients and idle keep-alive connections alike; ``body_timeout_s``: see :func:`make_app`."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0 seconds, got {header_timeout_s!r}")
    app = make_app(backend, cfg, body_timeout_s=body_timeout_s,
                   max_queue_timeout_s=max_queue_timeout_s)
    # aiohttp arms its keep-alive timer when a connection opens and after each response, and
    # closes the connection when it fires while no complete request has arrived: that is the
    # header read timeout. handler_cancellation: a lost connection cancels its handler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           keepalive_timeout=header_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner
