"""The sandbox's HTTP API (aiohttp), served from any *backend* with the Sandbox methods.

Routes (architecture.md): ``POST /v1/execute``, ``POST /v1/execute/batch``,
``DELETE /v1/sessions/{session_id}``, ``GET /healthz``, ``GET /metrics``.

A backend is any object with::

    async run(code, stdin="", timeout_s=None, session_id=None) -> ExecResult
    async run_batch(list[ExecRequest]) -> list[ExecResult]          # in order
    async close_session(session_id) -> bool
    health() -> dict          # or async; must contain "status" ("ok" when serving)
    metrics_text() -> str     # or async; Prometheus text

:class:`tirl.sandbox.pool.Sandbox` is one; the Redis fleet's gateway is another. Request
validation lives here (pure: :func:`parse_request`), so every backend gets the same 4xx
errors: invalid JSON, wrong types, unknown fields, code/stdin over the size limit, negative
or huge timeouts — each naming the field. What it does not: authentication (serve on
loopback, the default, or behind your own proxy).
"""

from __future__ import annotations

import inspect
import json
import math

from aiohttp import web

from tirl.sandbox.config import SandboxConfig
from tirl.sandbox.types import ExecRequest, ExecResult

MAX_SESSION_ID = 256
_FIELDS = {"code", "stdin", "timeout_s", "session_id"}


class RequestError(ValueError):
    """A bad request: ``field`` names the offending field, ``status`` is the HTTP code."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


def parse_request(obj: object, cfg: SandboxConfig, where: str = "") -> ExecRequest:
    """Validate one execute request (a decoded JSON object) against the limits in ``cfg``."""
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
    sid = obj.get("session_id")
    if sid is not None:
        if not isinstance(sid, str):
            raise RequestError(where + "session_id", f"must be a string or null, got {type(sid).__name__}")
        if not sid or len(sid) > MAX_SESSION_ID or not sid.isprintable():
            raise RequestError(where + "session_id",
                               f"must be 1..{MAX_SESSION_ID} printable characters")
    return ExecRequest(code=code, stdin=stdin, timeout_s=timeout, session_id=sid)


def parse_batch(obj: object, cfg: SandboxConfig) -> list[ExecRequest]:
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
    return [parse_request(r, cfg, f"requests[{i}].") for i, r in enumerate(reqs)]


def _internal(err: Exception, session_id: str | None) -> ExecResult:
    return ExecResult("infra_error", session_id=session_id,
                      reason=f"internal: {type(err).__name__}: {err}")


def _error(err: RequestError) -> web.Response:
    return web.json_response({"error": err.message, "field": err.field}, status=err.status)


async def _maybe_await(x):
    return await x if inspect.isawaitable(x) else x


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError("body", f"invalid JSON: {err}") from None


def make_app(backend, cfg: SandboxConfig | None = None) -> web.Application:
    """An aiohttp app serving ``backend`` (see the module docstring for the protocol).

    Limits come from ``cfg``, else ``backend.cfg``, else the defaults."""
    cfg = cfg or getattr(backend, "cfg", None) or SandboxConfig()
    per_req = cfg.max_code_bytes + cfg.max_stdin_bytes + 1024
    app = web.Application(client_max_size=min(per_req * cfg.max_batch, 1 << 30))

    async def execute(request: web.Request) -> web.Response:
        try:
            req = parse_request(await _json_body(request), cfg)
        except RequestError as err:
            return _error(err)
        try:
            res = await backend.run(req.code, req.stdin, req.timeout_s, req.session_id)
        except Exception as err:  # a typed result even when the backend breaks
            res = _internal(err, req.session_id)
        return web.json_response(res.to_dict())

    async def execute_batch(request: web.Request) -> web.Response:
        try:
            reqs = parse_batch(await _json_body(request), cfg)
        except RequestError as err:
            return _error(err)
        try:
            results = await backend.run_batch(reqs)
        except Exception as err:
            results = [_internal(err, r.session_id) for r in reqs]
        return web.json_response({"results": [r.to_dict() for r in results]})

    async def delete_session(request: web.Request) -> web.Response:
        found = await backend.close_session(request.match_info["session_id"])
        return web.Response(status=204) if found else web.json_response(
            {"error": "no such session", "field": "session_id"}, status=404)

    async def healthz(request: web.Request) -> web.Response:
        h = await _maybe_await(backend.health())
        return web.json_response(h, status=200 if h.get("status") == "ok" else 503)

    async def metrics(request: web.Request) -> web.Response:
        text = await _maybe_await(backend.metrics_text())
        return web.Response(text=text, content_type="text/plain")

    app.router.add_post("/v1/execute", execute)
    app.router.add_post("/v1/execute/batch", execute_batch)
    app.router.add_delete("/v1/sessions/{session_id}", delete_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(backend, host: str = "127.0.0.1", port: int = 8900,
                cfg: SandboxConfig | None = None) -> web.AppRunner:
    """Start serving ``backend`` (returns the runner; ``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(make_app(backend, cfg), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner
