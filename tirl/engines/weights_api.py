"""Weight updates for `tirl serve`: SGLang's endpoints over the running LocalEngine.

:func:`add_weight_routes` adds to a `tirl serve` application (before it starts)::

    POST /update_weights_from_disk   {"model_path": DIR, "load_format"?: "auto"|"safetensors",
                                      "weight_version"?: str, "flush_cache"?: bool,
                                      "abort_all_requests"?: false}
        -> {"success": bool, "message": str, "num_paused_requests": int}
    GET  /get_weight_version         -> {"weight_version": str}
    GET  /model_info                 -> {"model_path": str, "weight_version": str, ...}
    POST /pause_generation           {"mode": "in_place"}   (SGLang's name and mode)
    POST /continue_generation

The names and request shapes are SGLang's (docs/advanced_features/sglang_for_rl.md), so one
client drives both. Semantics:

* An update **waits for in-flight requests to finish on the old weights** while new ones
  wait (SGLang's default, its model-update writer lock), then copies the safetensors in
  ``model_path`` (HF layout; every ``*.safetensors`` file) into the model's parameters in
  place, flushes the engine's parked prefixes and K/V cache, and sets the served version.
* After ``/pause_generation {"mode": "in_place"}`` running requests are frozen between two
  decode steps; an update then loads at once and they continue on the new weights after
  ``/continue_generation`` (their K/V so far came from the old weights; the response names
  both versions).
* A load that fails (missing file, a missing parameter, a shape mismatch) changes nothing:
  every tensor is read and checked before the first copy. The answer is ``success: false``
  with the reason (HTTP 400), and the served version stays the old one.

Every completion response gets ``"weight_version"`` (the version that finished it) and,
when it differs, ``"weight_version_start"`` (the one it started on). ``/metrics`` gains
``tirl:weight_version`` (when the version is a number), ``tirl:weight_version_info{version}``,
``tirl:weight_updates_total``, ``tirl:weight_update_failures_total`` and
``tirl:weight_update_seconds`` (the last load).

What it does not do: ``abort_all_requests`` / pause modes ``abort`` and ``retract`` (refused
with a 400, never ignored), streamed responses' version field, loading a different
architecture, NCCL transfers (a server with GPUs should be vLLM or SGLang).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("tirl.serve.weights")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


class WeightLoadError(ValueError):
    """The weights at a path cannot be loaded into this model (nothing was changed)."""


def read_weights(model_path: str | Path, model: Any, load_format: str | None = None) -> dict[str, Any]:
    """Every parameter and buffer of ``model`` read from the safetensors under ``model_path``,
    cast to the model's dtype and checked for shape. Raises WeightLoadError naming what is wrong."""
    import torch
    from safetensors.torch import load_file

    if load_format not in (None, "auto", "safetensors"):
        raise WeightLoadError(f"load_format {load_format!r} is not supported; use 'safetensors' (or omit it)")
    root = Path(model_path)
    if not root.is_dir():
        raise WeightLoadError(f"model_path {str(root)!r} is not a directory on this server")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no *.safetensors file in {str(root)!r}; write the weights with "
                              "save_pretrained(safe_serialization=True)")
    found: dict[str, torch.Tensor] = {}
    for f in files:
        found.update(load_file(str(f), device="cpu"))
    want = model.state_dict()
    out, missing = {}, []
    for name, cur in want.items():
        t = found.get(name)
        if t is None and name.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False):
            continue  # tied to the embedding, which is loaded
        if t is None:
            if name in dict(model.named_buffers()):
                continue  # non-persistent buffers (rotary tables) are not saved
            missing.append(name)
            continue
        if tuple(t.shape) != tuple(cur.shape):
            raise WeightLoadError(f"{name}: shape {tuple(t.shape)} in {root} but {tuple(cur.shape)} in the "
                                  "served model; a weight update cannot change the architecture")
        out[name] = t.to(dtype=cur.dtype)
    if missing:
        raise WeightLoadError(f"{len(missing)} parameters missing from {root}: {', '.join(missing[:5])}"
                              + (" ..." if len(missing) > 5 else ""))
    return out


def copy_weights(model: Any, tensors: dict[str, Any]) -> None:
    """Copy ``tensors`` (from :func:`read_weights`) into ``model``'s parameters in place."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.to(state[name].device))


class _StepGate:
    """A lock taken around each decode step of a LocalEngine: holding it freezes running
    requests between two steps (``pause_generation`` mode ``in_place``)."""

    def __init__(self, engine: Any):
        self.lock = threading.Lock()
        self.supported = False
        for name in ("_step_fast", "_step_generic"):
            step = getattr(engine, name, None)
            if callable(step):
                setattr(engine, name, self._gated(step))
                self.supported = True

    def _gated(self, step):
        def run(*a, **kw):
            with self.lock:
                return step(*a, **kw)
        return run


class WeightState:
    """The served weight version, the pause/update state and the request counts."""

    def __init__(self, engine: Any, model_path: str = "", version: str = "0"):
        self.engine = engine
        self.model_path = model_path
        self.version = version
        self.in_flight = 0
        self.paused = False
        self.updates = 0
        self.failures = 0
        self.last_seconds = 0.0
        self.last_error = ""
        self._open = asyncio.Event()  # set = new generation requests may start
        self._open.set()
        self._idle = asyncio.Condition()
        self._update_lock = asyncio.Lock()
        self._gate = _StepGate(engine)

    async def enter(self) -> str:
        """Wait while an update or a pause holds new requests; returns the version it starts on."""
        while not self._open.is_set():
            await self._open.wait()
        self.in_flight += 1
        return self.version

    async def leave(self) -> None:
        async with self._idle:
            self.in_flight -= 1
            self._idle.notify_all()

    async def _wait_idle(self) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self.in_flight == 0)
        while True:  # requests of other routes (none in tirl serve) may still hold the engine
            s = self.engine.stats()
            if not s.get("running") and not s.get("waiting"):
                return
            await asyncio.sleep(0.01)

    async def pause(self) -> int:
        """Freeze running requests in place and hold new ones; the number frozen."""
        if not self._gate.supported:
            raise WeightLoadError("this engine cannot pause requests in place")
        if not self.paused:
            self._open.clear()
            await asyncio.to_thread(self._gate.lock.acquire)
            self.paused = True
        return self.in_flight

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._gate.lock.release()
        self._open.set()

    async def update_from_disk(self, model_path: str, load_format: str | None, version: str | None,
                               flush_cache: bool) -> tuple[int, float]:
        """Load ``model_path`` (see the module docstring); returns (requests paused, seconds)."""
        async with self._update_lock:
            t0 = time.perf_counter()
            model = self.engine.model
            # read and check everything before holding any request: a bad path changes nothing
            tensors = await asyncio.to_thread(read_weights, model_path, model, load_format)
            held_here = not self.paused
            if held_here:
                self._open.clear()
            try:
                if held_here:
                    await self._wait_idle()  # in-flight requests finish on the old weights
                await asyncio.to_thread(copy_weights, model, tensors)
                if flush_cache and not self.paused:
                    self.engine.release_cache()
                self.model_path = model_path
                self.version = version if version is not None else str(self.updates + 1)
                self.updates += 1
                self.last_seconds = time.perf_counter() - t0
            finally:
                if held_here:
                    self._open.set()
            return (self.in_flight if self.paused else 0), self.last_seconds


WEIGHT_STATE = web.AppKey("weight_state", WeightState)


def add_weight_routes(app: web.Application, engine: Any, tokenizer: Any = None, *,
                      model_path: str = "", initial_version: str = "0") -> WeightState:
    """Add the weight-update endpoints, the version field and the version metrics (see the
    module docstring) to a `tirl serve` app over ``engine`` (a LocalEngine). Call it before
    the app starts. ``model_path``: what the server loaded at start (for ``/model_info``)."""
    state = WeightState(engine, model_path, initial_version)

    @web.middleware
    async def versioned(request: web.Request, handler):
        if request.method == "POST" and request.path in GENERATION_PATHS:
            start = await state.enter()
            try:
                resp = await handler(request)
            finally:
                await state.leave()
            _stamp_version(resp, start, state.version)
            return resp
        resp = await handler(request)
        if request.path == "/metrics" and isinstance(resp, web.Response) and resp.status == 200:
            resp.text = (resp.text or "") + _metric_lines(state)
        return resp

    async def update_from_disk(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _fail(400, "the request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model_path"), str) or not body["model_path"]:
            return _fail(400, "'model_path' (a directory of safetensors readable by this server) is required")
        if body.get("abort_all_requests"):
            return _fail(400, "abort_all_requests is not supported by tirl serve; in-flight requests finish "
                         "on the old weights (or pause them first with /pause_generation)")
        version = body.get("weight_version")
        if version is not None and not isinstance(version, (str, int)):
            return _fail(400, f"'weight_version' must be a string, got {version!r}")
        flush = body.get("flush_cache", True)
        if not isinstance(flush, bool):
            return _fail(400, f"'flush_cache' must be true or false, got {flush!r}")
        try:
            paused, secs = await state.update_from_disk(body["model_path"], body.get("load_format"),
                                                        None if version is None else str(version), flush)
        except WeightLoadError as err:
            state.failures += 1
            state.last_error = str(err)
            log.error("weight update from %s failed, still serving version %s: %s",
                      body["model_path"], state.version, err)
            return _fail(400, str(err))
        except Exception as err:  # noqa: BLE001 - answer with the reason; the version stays
            state.failures += 1
            state.last_error = f"{type(err).__name__}: {err}"
            log.exception("weight update from %s failed", body["model_path"])
            return _fail(500, f"loading {body['model_path']} failed: {type(err).__name__}: {err}")
        log.info("weights updated from %s: version %s (%.3f s)", body["model_path"], state.version, secs)
        return web.json_response({"success": True, "num_paused_requests": paused,
                                  "message": f"loaded {body['model_path']} as version {state.version} "
                                             f"in {secs:.3f} s"})

    async def get_version(request: web.Request) -> web.Response:
        return web.json_response({"weight_version": state.version})

    async def model_info(request: web.Request) -> web.Response:
        return web.json_response({"model_path": state.model_path, "weight_version": state.version,
                                  "is_generation": True, "paused": state.paused})

    async def pause(request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        mode = body.get("mode", "in_place")
        if mode != "in_place":
            return _fail(400, f"pause mode {mode!r} is not supported by tirl serve; use 'in_place'")
        try:
            n = await state.pause()
        except WeightLoadError as err:
            return _fail(400, str(err))
        return web.json_response({"success": True, "message": f"paused with {n} requests in flight"})

    async def resume(request: web.Request) -> web.Response:
        state.resume()
        return web.json_response({"success": True, "message": "generation continues"})

    app.middlewares.append(versioned)
    app.add_routes([
        web.post("/update_weights_from_disk", update_from_disk),
        web.get("/get_weight_version", get_version),
        web.get("/model_info", model_info),
        web.post("/pause_generation", pause),
        web.post("/continue_generation", resume),
    ])
    app[WEIGHT_STATE] = state
    return state


def _stamp_version(resp: Any, start: str, end: str) -> None:
    """Add the weight version(s) to a JSON completion response (streamed ones are left as is)."""
    if not isinstance(resp, web.Response) or resp.status != 200 or resp.body is None:
        return
    if not (resp.content_type or "").endswith("json"):
        return
    try:
        data = json.loads(resp.body)
    except (ValueError, TypeError):
        return
    if not isinstance(data, dict):
        return
    data["weight_version"] = end
    if start != end:
        data["weight_version_start"] = start
    resp.body = json.dumps(data).encode()


def _metric_lines(state: WeightState) -> str:
    lines = []
    try:
        lines += ["# TYPE tirl:weight_version gauge", f"tirl:weight_version {int(state.version)}"]
    except ValueError:
        pass
    v = state.version.replace("\\", "\\\\").replace('"', '\\"')
    lines += [
        "# TYPE tirl:weight_version_info gauge", f'tirl:weight_version_info{{version="{v}"}} 1',
        "# TYPE tirl:weight_updates_total counter", f"tirl:weight_updates_total {state.updates}",
        "# TYPE tirl:weight_update_failures_total counter",
        f"tirl:weight_update_failures_total {state.failures}",
        "# TYPE tirl:weight_update_seconds gauge", f"tirl:weight_update_seconds {state.last_seconds:.6f}",
    ]
    return "\n".join(lines) + "\n"


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


async def _json_or_empty(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}
