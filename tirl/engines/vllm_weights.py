"""vLLM's side of weight sync: reload a running vLLM server's weights from a directory on disk.

What vLLM 0.32 offers for this (read in the installed package; every route below exists only
when the server runs with ``VLLM_SERVER_DEV_MODE=1``):

* ``POST /collective_rpc`` ``{"method": "reload_weights", "kwargs": {"weights_path": DIR}}``
  (``vllm/entrypoints/serve/dev/rpc/api_router.py``) calls ``Worker.reload_weights`` →
  ``GPUModelRunner.reload_weights`` (the CPU runner inherits it) →
  ``vllm.model_executor.model_loader.reload.inplace.reload_weights``: the server's own model
  loader reads every ``*.safetensors`` file of ``DIR`` (Hugging Face parameter names) and
  ``model.load_weights`` copies them into the live model, layer by layer. ``DIR`` is read by
  the *server*, so it must be a path on the server's file system (a shared disk).
  **A tied LM head is not updated on CPU** (its packed GEMM copy keeps the old values; measured:
  the server then matches "new embeddings + old head" to 1e-5), so tirl calls
  ``tirl_reload_weights`` from its worker extension :mod:`tirl.engines.vllm_ext` instead, which
  re-packs tied layers after vLLM's reload; without the extension, a tied model is refused.
* ``POST /pause?mode=wait|keep|abort`` and ``POST /resume``
  (``vllm/entrypoints/rl/online/api_router.py`` → ``AsyncLLM.pause_generation``): while
  paused, new requests queue. ``wait`` lets in-flight requests finish on the old weights,
  ``keep`` freezes them (they continue on the new weights after ``/resume``), ``abort`` ends
  them with ``finish_reason = "abort"``.
* ``POST /reset_prefix_cache?reset_running_requests=…`` (``serve/dev/cache/api_router.py``)
  answers ``{"success": bool}``; with ``reset_running_requests=true`` the requests still
  holding KV blocks (frozen by ``keep``) are preempted and recomputed on resume, so no KV entry
  computed with the old weights survives.
* ``POST /update_weight_version`` ``{"new_version": "N"}`` and ``GET /weight_info`` →
  ``{"weight_version": "N"}`` (the engine core's label, ``"default"`` at start).

:func:`reload_from_disk` runs them in that order: pause, reload, flush the prefix cache, set the
version, resume, and reads the version back. The mapping from tirl's in-flight policy
(``[rollout] in_flight``) to vLLM's pause mode is :data:`PAUSE_MODES`.

Every route used is idempotent, so a request whose kept-alive connection the server had closed
is sent once more. Failures raise :class:`VLLMWeightError` naming the route, the server's answer
and what to do. A reload that fails leaves the server **paused** on purpose: it may hold a half-loaded model,
and a paused server answers nothing rather than something from unknown weights. The caller
takes it out of rotation; :func:`resume` or a restart brings it back.

What it does not do: write the weight files (the trainer's ``disk`` backend in
``tirl.engines.weight_sync`` does), choose which servers to sync, or vLLM's NCCL transfer
(``/init_weight_transfer_engine`` + ``/update_weights``), which needs GPUs.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from tirl.engines.openai import server_message
from tirl.engines.weight_sync import server_root

PauseMode = Literal["wait", "keep", "abort"]

#: tirl's in-flight policy → vLLM's ``/pause`` mode. ``finish``: in-flight requests complete on
#: the old weights before the reload; ``pause``: they are frozen and continue on the new weights.
PAUSE_MODES: dict[str, PauseMode] = {"finish": "wait", "pause": "keep", "abort": "abort"}

DEV_MODE_HINT = ("start the vLLM server with the environment variable VLLM_SERVER_DEV_MODE=1 "
                 "(its weight-reload, pause and cache routes exist only then)")


class VLLMWeightError(RuntimeError):
    """A vLLM weight-reload step failed; the message names the route, the answer and what to do."""


def pause_mode(in_flight: str) -> PauseMode:
    """vLLM's ``/pause`` mode for tirl's in-flight policy ``finish`` / ``pause`` / ``abort``."""
    try:
        return PAUSE_MODES[in_flight]
    except KeyError:
        raise ValueError(f"in_flight={in_flight!r}: use one of {sorted(PAUSE_MODES)} ('finish': "
                         "in-flight requests end on the old weights; 'pause': they wait and go on "
                         "with the new ones; 'abort': they are cut off)") from None


async def _call(session: Any, method: str, base_url: str, path: str, *, timeout_s: float,
                params: dict[str, str] | None = None, body: dict | None = None) -> Any:
    """One request to a dev route; the parsed JSON answer (None for an empty body)."""
    import asyncio

    import aiohttp

    url = server_root(base_url) + path
    for attempt in (0, 1):
        try:
            async with session.request(method, url, params=params, json=body,
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                text = await resp.text()
                if resp.status == 404:
                    raise VLLMWeightError(f"{method} {url} answered 404: the server has no such "
                                          f"route; {DEV_MODE_HINT}")
                if resp.status >= 400:
                    raise VLLMWeightError(f"{method} {url} answered {resp.status}: {server_message(text)}")
            break
        except aiohttp.ServerDisconnectedError:
            # a kept-alive connection the server closed while idle (uvicorn does after 5 s):
            # every route here is idempotent, so send it once more on a new connection
            if attempt == 0:
                continue
            raise VLLMWeightError(f"{method} {url}: the server closed the connection twice without "
                                  "answering; did it crash? (check its log)") from None
        except aiohttp.ClientConnectionError as err:
            raise VLLMWeightError(f"cannot reach {url} ({type(err).__name__}: {err}); is the vLLM "
                                  "server running?") from None
        except asyncio.TimeoutError:
            raise VLLMWeightError(f"{method} {url} did not answer within {timeout_s:g} s; the server "
                                  "is hung or the step takes longer (raise timeout_s)") from None
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise VLLMWeightError(f"{method} {url} answered non-JSON: {text[:300]!r}") from None


async def pause(session: Any, base_url: str, mode: PauseMode = "wait", *,
                timeout_s: float = 600.0) -> None:
    """``POST /pause?mode=…``: new requests queue; in-flight ones per ``mode`` (module docstring).

    With ``wait`` it returns once the in-flight requests have finished, so ``timeout_s`` must
    cover the longest of them. The KV and prefix caches are cleared once the engine is idle
    (``keep`` leaves the frozen requests' blocks: flush with :func:`reset_prefix_cache`).
    """
    if mode not in ("wait", "keep", "abort"):
        raise ValueError(f"mode={mode!r}: vLLM's /pause takes 'wait', 'keep' or 'abort'")
    await _call(session, "POST", base_url, "/pause", timeout_s=timeout_s,
                params={"mode": mode, "clear_cache": "true"})


async def resume(session: Any, base_url: str, *, timeout_s: float = 60.0) -> None:
    """``POST /resume``: queued and frozen requests run again."""
    await _call(session, "POST", base_url, "/resume", timeout_s=timeout_s)


async def is_paused(session: Any, base_url: str, *, timeout_s: float = 30.0) -> bool:
    """``GET /is_paused``."""
    data = await _call(session, "GET", base_url, "/is_paused", timeout_s=timeout_s)
    return bool(data["is_paused"])


async def reset_prefix_cache(session: Any, base_url: str, *, reset_running_requests: bool = True,
                             timeout_s: float = 60.0) -> None:
    """``POST /reset_prefix_cache``: drop every cached KV block, so no prompt reuses KV entries
    computed with the old weights. With ``reset_running_requests`` the requests that still hold
    blocks are preempted (recomputed when they run again); without it vLLM refuses while any do.
    Raises :class:`VLLMWeightError` when vLLM answers ``success: false``."""
    data = await _call(session, "POST", base_url, "/reset_prefix_cache", timeout_s=timeout_s,
                       params={"reset_running_requests": "true" if reset_running_requests else "false"})
    if not (isinstance(data, dict) and data.get("success") is True):
        raise VLLMWeightError(
            f"{server_root(base_url)}/reset_prefix_cache answered {data!r}: vLLM kept its prefix cache "
            "(blocks still held by running requests); pause the server first or pass "
            "reset_running_requests=True")


async def set_weight_version(session: Any, base_url: str, version: int | str, *,
                             timeout_s: float = 30.0) -> None:
    """``POST /update_weight_version``: the label vLLM reports for the weights it serves."""
    await _call(session, "POST", base_url, "/update_weight_version", timeout_s=timeout_s,
                body={"new_version": str(version)})


async def weight_version(session: Any, base_url: str, *, timeout_s: float = 30.0) -> str:
    """``GET /weight_info``: the served weight version (``"default"`` until one is set)."""
    data = await _call(session, "GET", base_url, "/weight_info", timeout_s=timeout_s)
    try:
        return str(data["weight_version"])
    except (KeyError, TypeError):
        raise VLLMWeightError(f"{server_root(base_url)}/weight_info answered {data!r}, "
                              "not {'weight_version': ...}") from None


EXTENSION_METHOD = "tirl_reload_weights"
EXTENSION_HINT = ("start vLLM with tirl on its PYTHONPATH and --worker-extension-cls "
                  "tirl.engines.vllm_ext.TirlWorkerExtension")


def ties_embeddings(model_dir: str) -> bool:
    """Whether ``model_dir/config.json`` ties the LM head to the embeddings (True when it cannot
    be read: then the safe path is taken). Read on this machine: a shared disk, as the server's."""
    from pathlib import Path

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return True
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    return bool(cfg.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False)))


async def reload_weights(session: Any, base_url: str, model_dir: str, *,
                         timeout_s: float = 600.0) -> tuple[str, list[str]]:
    """Load ``model_dir``'s weights into the running model through ``POST /collective_rpc``;
    returns the worker method used and the tied layers the extension re-packed.

    ``model_dir`` holds ``*.safetensors`` with Hugging Face parameter names (as
    ``save_pretrained`` writes them) and is read by the server process. The method is
    ``tirl_reload_weights`` (:mod:`tirl.engines.vllm_ext`: vLLM's reload, then the tied LM head
    re-packed) when the server has the extension. Without it, vLLM's own ``reload_weights`` is
    used for a model with untied embeddings; for a tied one it raises :class:`VLLMWeightError`
    before touching the weights, because vLLM 0.32 on CPU would keep the old head.
    """
    try:
        data = await _call(session, "POST", base_url, "/collective_rpc", timeout_s=timeout_s,
                           body={"method": EXTENSION_METHOD, "kwargs": {"weights_path": str(model_dir)},
                                 "timeout": timeout_s})
        results = data.get("results") if isinstance(data, dict) else None
        repacked = sorted({str(n) for r in results or [] if isinstance(r, dict)
                           for n in r.get("reprocessed", [])})
        return EXTENSION_METHOD, repacked
    except VLLMWeightError as err:
        if f"no attribute '{EXTENSION_METHOD}'" not in str(err) and "is not implemented" not in str(err):
            raise
    if ties_embeddings(model_dir):
        raise VLLMWeightError(
            f"{server_root(base_url)} has no {EXTENSION_METHOD} worker method and {model_dir} ties its "
            "LM head to the embeddings: vLLM 0.32's own reload_weights keeps a tied head's packed "
            f"(CPU) copy on the old values, so the server would serve mixed weights; {EXTENSION_HINT}")
    await _call(session, "POST", base_url, "/collective_rpc", timeout_s=timeout_s,
                body={"method": "reload_weights", "kwargs": {"weights_path": str(model_dir)},
                      "timeout": timeout_s})
    return "reload_weights", []


async def reload_from_disk(session: Any, base_url: str, model_dir: str, version: int | str, *,
                           in_flight: str = "finish", timeout_s: float = 600.0) -> dict[str, Any]:
    """Load ``model_dir``'s weights into the running vLLM server at ``base_url`` as ``version``.

    Steps: pause (``in_flight``: ``finish`` / ``pause`` / ``abort``, see :data:`PAUSE_MODES`),
    reload from disk, flush the prefix cache (preempting frozen requests), set the weight
    version, resume, and read the version back. Returns the worker ``method`` used and the
    tied layers it ``repacked`` (see :func:`reload_weights`), and the seconds each step took (``pause_s``, ``reload_s``,
    ``flush_s``, ``resume_s``, ``total_s``).

    Raises :class:`VLLMWeightError`. When the reload or the flush fails the server is left
    paused (it may hold a half-loaded model) and the message says so; when the version read
    back differs, the server is serving weights it does not label as ``version``.
    """
    mode = pause_mode(in_flight)
    root = server_root(base_url)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    await pause(session, root, mode, timeout_s=timeout_s)
    method, repacked = "", []
    t1 = time.perf_counter()
    try:
        method, repacked = await reload_weights(session, root, model_dir, timeout_s=timeout_s)
        t2 = time.perf_counter()
        await reset_prefix_cache(session, root, reset_running_requests=True, timeout_s=timeout_s)
        await set_weight_version(session, root, version, timeout_s=timeout_s)
    except VLLMWeightError as err:
        raise VLLMWeightError(
            f"{err} — the server at {root} is left paused (its weights may be partly {model_dir}); "
            "take it out of rotation, fix the cause, then reload again or restart it") from None
    t3 = time.perf_counter()
    await resume(session, root, timeout_s=timeout_s)
    t4 = time.perf_counter()
    served = await weight_version(session, root, timeout_s=timeout_s)
    if served != str(version):
        raise VLLMWeightError(f"{root} reports weight version {served!r} after loading version "
                              f"{version!r} from {model_dir}; another client changed it meanwhile")
    times.update(method=method, repacked=repacked, pause_s=t1 - t0, reload_s=t2 - t1, flush_s=t3 - t2, resume_s=t4 - t3,
                 total_s=time.perf_counter() - t0)
    return times


async def is_vllm(session: Any, base_url: str, *, timeout_s: float = 10.0) -> bool:
    """Whether ``GET /v1/models`` lists a model ``owned_by`` vLLM (how ``OpenAIEngine`` tells too)."""
    data = await _call(session, "GET", base_url, "/v1/models", timeout_s=timeout_s)
    cards = data.get("data", []) if isinstance(data, dict) else []
    return any(str(c.get("owned_by", "")).lower() == "vllm" for c in cards if isinstance(c, dict))


async def check_reloadable(session: Any, base_url: str, *, timeout_s: float = 10.0) -> str:
    """Fail fast, before training, when the server cannot take a reload: the dev routes are
    missing (no ``VLLM_SERVER_DEV_MODE=1``) or it is paused. Returns its weight version."""
    if await is_paused(session, base_url, timeout_s=timeout_s):
        raise VLLMWeightError(f"{server_root(base_url)} is paused (a failed reload leaves it so); "
                              "resume it or restart it before using it")
    return await weight_version(session, base_url, timeout_s=timeout_s)
