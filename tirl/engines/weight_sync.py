"""Pushing the trainer's weights to inference servers: one interface, two backends.

:class:`DiskWeightSync` (``[rollout] sync = "disk"``): rank 0 writes the policy as
safetensors in the Hugging Face layout to ``<sync_dir>/v<N>/`` (written to a temporary
directory, then renamed, so a server never reads half a version), then every server is
told, at once, ``POST /update_weights_from_disk {"model_path": ".../v<N>", "weight_version":
"N"}`` (SGLang's endpoint and request shape; `tirl serve` has the same,
:mod:`tirl.engines.weights_api`) and asked back which version it serves
(``GET /model_info``, else ``GET /get_weight_version``). A server is *confirmed* only when
it says ``success`` and then reports version N. With ``in_flight = "pause"`` each update
is wrapped in ``/pause_generation {"mode": "in_place"}`` … ``/continue_generation``.

:class:`NcclWeightSync` (``sync = "nccl"``, experimental: written to the servers'
documented protocols, its control flow tested against fake servers, never run on GPUs
here): see its docstring.

A push returns a :class:`SyncResult` naming every server that failed and why; it never
raises for one failed server — the caller takes failed servers out of rotation (the
trainer drains them in the dispatcher and logs it). It raises :class:`WeightSyncError`
when no server confirmed the version.

What it does not do: gather FSDP shards (the caller passes a model whose ``state_dict``
is whole on rank 0), or choose when to sync (the trainer does).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("tirl.weight_sync")


class WeightSyncError(RuntimeError):
    """No server confirmed the new weights (the message names each one and why)."""


@dataclass
class SyncResult:
    version: int
    seconds: float = 0.0  # the whole push: write + every server's load and confirmation
    write_seconds: float = 0.0
    bytes: int = 0
    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # url -> why

    @property
    def seconds_per_gb(self) -> float:
        return self.seconds / max(1e-12, self.bytes / 1e9)


def server_root(url: str) -> str:
    """``http://h:p/v1`` → ``http://h:p`` (the weight endpoints live at the root)."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def save_weights(model: Any, path: str | Path) -> int:
    """Write ``model`` as safetensors (HF layout, with config.json) to ``path`` atomically;
    returns the bytes of weights written. An existing ``path`` is replaced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return size


class _HTTP:
    """A small JSON client shared by the backends (one aiohttp session)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._session = None

    async def session(self):
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s,
                                                                                 connect=10.0))
        return self._session

    async def call(self, method: str, url: str, body: dict | None = None) -> tuple[int, Any]:
        s = await self.session()
        async with s.request(method, url, json=body) as r:
            text = await r.text()
            try:
                import json

                return r.status, json.loads(text) if text else {}
            except ValueError:
                return r.status, {"message": text[:300]}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ok(status: int, data: Any) -> bool:
    return 200 <= status < 300 and not (isinstance(data, dict) and data.get("success") is False)


def _why(status: int, data: Any) -> str:
    msg = data.get("message") or data.get("error") or data.get("detail") if isinstance(data, dict) else data
    return f"HTTP {status}: {str(msg)[:300]}"


async def server_version(http: _HTTP, url: str) -> str | None:
    """The weight version ``url`` serves: ``/model_info`` (SGLang ≥ 0.5), else
    ``/get_weight_version``; None when it reports none."""
    root = server_root(url)
    for path in ("/model_info", "/get_weight_version"):
        status, data = await http.call("GET", root + path)
        if status == 200 and isinstance(data, dict) and data.get("weight_version") is not None:
            return str(data["weight_version"])
    return None


class DiskWeightSync:
    """``disk`` backend; see the module docstring."""

    name = "disk"

    def __init__(self, sync_dir: str | Path, *, in_flight: str = "finish", timeout_s: float = 300.0,
                 keep_versions: int = 2):
        if in_flight not in ("finish", "pause"):
            raise ValueError(f"in_flight={in_flight!r}: use 'finish' or 'pause'")
        if keep_versions < 1:
            raise ValueError(f"keep_versions={keep_versions} must be >= 1")
        self.sync_dir = Path(sync_dir)
        self.in_flight = in_flight
        self.keep_versions = keep_versions
        self.http = _HTTP(timeout_s)

    def version_dir(self, version: int) -> Path:
        return self.sync_dir / f"v{version}"

    async def push(self, model: Any, version: int, urls: Sequence[str]) -> SyncResult:
        """Write version ``version`` of ``model`` and have every server in ``urls`` load it."""
        res = SyncResult(version)
        t0 = time.perf_counter()
        path = self.version_dir(version).resolve()
        res.bytes = await asyncio.to_thread(save_weights, model, path)
        res.write_seconds = time.perf_counter() - t0
        outcomes = await asyncio.gather(*(self._load(u, str(path), version) for u in urls))
        for url, why in zip(urls, outcomes):
            if why is None:
                res.confirmed.append(url)
            else:
                res.failed[url] = why
        res.seconds = time.perf_counter() - t0
        await asyncio.to_thread(self._prune, version)
        if urls and not res.confirmed:
            raise WeightSyncError(f"no server loaded weight version {version} from {path}: " + "; ".join(
                f"{u}: {w}" for u, w in res.failed.items()))
        return res

    async def _load(self, url: str, path: str, version: int) -> str | None:
        """None when ``url`` loaded and confirmed ``version``, else why not."""
        root = server_root(url)
        try:
            paused = False
            if self.in_flight == "pause":
                status, data = await self.http.call("POST", root + "/pause_generation", {"mode": "in_place"})
                if not _ok(status, data):
                    return f"pause_generation failed: {_why(status, data)}"
                paused = True
            try:
                status, data = await self.http.call("POST", root + "/update_weights_from_disk", {
                    "model_path": path, "weight_version": str(version), "flush_cache": True})
            finally:
                if paused:
                    await self.http.call("POST", root + "/continue_generation", {})
            if not _ok(status, data):
                return f"update_weights_from_disk failed: {_why(status, data)}"
            got = await server_version(self.http, url)
            if got != str(version):
                return f"loaded, but reports weight version {got!r} instead of {str(version)!r}"
            return None
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - connection refused, timeout: the server is gone
            return f"{type(err).__name__}: {err}"

    def _prune(self, newest: int) -> None:
        keep = {f"v{v}" for v in range(newest - self.keep_versions + 1, newest + 1)}
        if not self.sync_dir.is_dir():
            return
        for d in self.sync_dir.iterdir():
            if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    async def aclose(self) -> None:
        await self.http.aclose()


def make_weight_sync(rollout_cfg: Any, sync_dir: str | Path) -> Any:
    """The backend of a ``[rollout]`` section (``sync_dir``: resolved by the caller)."""
    if rollout_cfg.sync == "disk":
        return DiskWeightSync(sync_dir, in_flight=rollout_cfg.in_flight, timeout_s=rollout_cfg.sync_timeout_s,
                              keep_versions=rollout_cfg.keep_versions)
    raise ValueError(f"rollout.sync = {rollout_cfg.sync!r}: use 'disk' or 'nccl'")
