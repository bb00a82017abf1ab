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
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file

    # one file, each storage once (a tied lm_head is the embedding, as save_pretrained
    # writes it); measured 2.4x faster than save_pretrained on tmpfs for a 545 MB model
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = t.detach().contiguous()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    size = (tmp / "model.safetensors").stat().st_size
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
        self._kinds: dict[str, bool] = {}  # server root -> is vLLM

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
        """None when ``url`` loaded and confirmed ``version``, else why not. A vLLM server
        reloads through its own dev-mode API (:mod:`tirl.engines.vllm_weights`); `tirl serve`
        and SGLang through ``/update_weights_from_disk``."""
        root = server_root(url)
        try:
            if await self._is_vllm(root):
                from tirl.engines.vllm_weights import reload_from_disk

                await reload_from_disk(await self.http.session(), root, path, version,
                                       in_flight=self.in_flight, timeout_s=self.http.timeout_s)
                return None
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

    async def _is_vllm(self, root: str) -> bool:
        if root not in self._kinds:
            from tirl.engines.vllm_weights import is_vllm

            try:
                self._kinds[root] = await is_vllm(await self.http.session(), root)
            except Exception:  # noqa: BLE001 - not answering: the load below reports the server
                return False
        return self._kinds[root]

    def _prune(self, newest: int) -> None:
        keep = {f"v{v}" for v in range(newest - self.keep_versions + 1, newest + 1)}
        if not self.sync_dir.is_dir():
            return
        for d in self.sync_dir.iterdir():
            if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    async def aclose(self) -> None:
        await self.http.aclose()


_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def tensor_specs(model: Any) -> tuple[list[str], list[str], list[list[int]], list[Any]]:
    """(names, dtype names, shapes, tensors) of ``model``'s weights in broadcast order (HF
    names; a tied ``lm_head.weight`` is sent once, under the embedding's name)."""
    names, dtypes, shapes, tensors = [], [], [], []
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if id(t) in seen or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        names.append(name)
        dtypes.append(_DTYPE_NAMES.get(str(t.dtype), str(t.dtype).removeprefix("torch.")))
        shapes.append(list(t.shape))
        tensors.append(t)
    return names, dtypes, shapes, tensors


def vllm_nccl_group(master_address: str, master_port: int, world_size: int) -> Any:
    """The trainer's end (rank 0) of vLLM's NCCL weight-transfer group (needs vLLM and CUDA
    in the trainer's environment); its ``broadcast(tensor, src=0)`` sends one tensor."""
    import torch

    try:
        from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group
    except ImportError as err:
        raise WeightSyncError(f"rollout.sync = 'nccl' needs vLLM in the trainer's environment ({err}); "
                              "use rollout.sync = 'disk'") from None
    return stateless_init_process_group(master_address, master_port, 0, world_size, torch.device("cuda:0"))


class NcclWeightSync:
    """``nccl`` backend (EXPERIMENTAL: written to vLLM's and SGLang's documented HTTP
    protocols, control flow tested against fake servers, never run on GPUs here).

    Once: each server's kind and size are read (SGLang answers ``GET /model_info``;
    otherwise vLLM, whose ``GET /get_world_size`` gives its ranks), the trainer opens
    rank 0 of one NCCL group of ``1 + Σ server ranks`` (``group_factory``; default vLLM's
    ``stateless_init_process_group``) while every server joins with its ``rank_offset``:
    vLLM ``POST /init_weight_transfer_engine {"init_info": {master_address, master_port,
    rank_offset, world_size}}``, SGLang ``POST /init_weights_update_group {master_address,
    master_port, rank_offset, world_size, group_name, backend: "nccl"}``.

    Each push: pause (vLLM ``POST /pause?mode=keep|wait``; SGLang ``/pause_generation
    {"mode": "in_place"}`` when ``in_flight = "pause"``), announce the tensors (vLLM
    ``POST /update_weights {"update_info": {names, dtype_names, shapes, packed: false}}``,
    SGLang ``POST /update_weights_from_distributed {names, dtypes, shapes, group_name,
    flush_cache: true, weight_version}``) and, while those calls wait, broadcast every
    tensor in that order from rank 0; then vLLM ``POST /resume`` (and ``/update_weight_version``
    where offered), SGLang ``/continue_generation``. A server is confirmed when its calls
    succeeded (and, where it reports one, its version is N). A failure mid-broadcast leaves
    the group unusable: the push raises, as NCCL cannot drop one member.
    """

    name = "nccl"

    def __init__(self, *, in_flight: str = "finish", timeout_s: float = 300.0, master_address: str = "",
                 master_port: int = 29650, group_factory: Any = None, group_name: str = "tirl_weights"):
        if in_flight not in ("finish", "pause"):
            raise ValueError(f"in_flight={in_flight!r}: use 'finish' or 'pause'")
        self.in_flight = in_flight
        self.http = _HTTP(timeout_s)
        self.master_address = master_address
        self.master_port = master_port
        self.group_factory = group_factory or vllm_nccl_group
        self.group_name = group_name
        self.group = None
        self.kinds: dict[str, str] = {}  # url -> "vllm" | "sglang"

    async def _kind_and_size(self, url: str) -> tuple[str, int]:
        root = server_root(url)
        status, data = await self.http.call("GET", root + "/model_info")
        if status == 200 and isinstance(data, dict) and "weight_version" in data:
            status, info = await self.http.call("GET", root + "/get_server_info")
            tp = info.get("tp_size", 1) if status == 200 and isinstance(info, dict) else 1
            return "sglang", int(tp or 1)
        status, data = await self.http.call("GET", root + "/get_world_size")
        if status != 200 or not isinstance(data, dict) or "world_size" not in data:
            raise WeightSyncError(f"{url} offers neither SGLang's /model_info nor vLLM's /get_world_size "
                                  f"({_why(status, data)}); the nccl backend needs vLLM (--weight-transfer-config "
                                  "'{\"backend\": \"nccl\"}') or SGLang servers")
        return "vllm", int(data["world_size"])

    async def connect(self, urls: Sequence[str]) -> None:
        """Open the NCCL group with every server in ``urls`` (once, before the first push)."""
        import socket

        sizes = await asyncio.gather(*(self._kind_and_size(u) for u in urls))
        world = 1 + sum(n for _, n in sizes)
        addr = self.master_address or socket.gethostbyname(socket.gethostname())
        calls, offset = [], 1
        for url, (kind, n) in zip(urls, sizes):
            self.kinds[url] = kind
            root = server_root(url)
            if kind == "vllm":
                body = {"init_info": {"master_address": addr, "master_port": self.master_port,
                                      "rank_offset": offset, "world_size": world}}
                calls.append(self.http.call("POST", root + "/init_weight_transfer_engine", body))
            else:
                calls.append(self.http.call("POST", root + "/init_weights_update_group", {
                    "master_address": addr, "master_port": self.master_port, "rank_offset": offset,
                    "world_size": world, "group_name": self.group_name, "backend": "nccl"}))
            offset += n
        # the servers block in their half of the rendezvous until rank 0 joins: run both
        joined = asyncio.gather(*calls)
        self.group = await asyncio.to_thread(self.group_factory, addr, self.master_port, world)
        for url, (status, data) in zip(urls, await joined):
            if not _ok(status, data):
                raise WeightSyncError(f"{url} did not join the NCCL weight group: {_why(status, data)}")

    async def push(self, model: Any, version: int, urls: Sequence[str]) -> SyncResult:
        if self.group is None:
            await self.connect(urls)
        res = SyncResult(version)
        t0 = time.perf_counter()
        names, dtypes, shapes, tensors = tensor_specs(model)
        res.bytes = sum(t.numel() * t.element_size() for t in tensors)
        await asyncio.gather(*(self._pause(u) for u in urls))
        announce = asyncio.gather(*(self._announce(u, names, dtypes, shapes, version) for u in urls))
        try:
            await asyncio.to_thread(self._broadcast, tensors)
        except BaseException:
            announce.cancel()
            raise
        outcomes = await announce
        await asyncio.gather(*(self._resume(u, version) for u in urls))
        for url, why in zip(urls, outcomes):
            if why is None:
                got = await server_version(self.http, url) if self.kinds.get(url) == "sglang" else None
                if got is not None and got != str(version):
                    why = f"reports weight version {got!r} instead of {str(version)!r}"
            if why is None:
                res.confirmed.append(url)
            else:
                res.failed[url] = why
        res.seconds = time.perf_counter() - t0
        if urls and not res.confirmed:
            raise WeightSyncError(f"no server took weight version {version} over NCCL: " + "; ".join(
                f"{u}: {w}" for u, w in res.failed.items()))
        return res

    def _broadcast(self, tensors: list) -> None:
        for t in tensors:
            self.group.broadcast(t.detach().contiguous(), src=0)

    async def _pause(self, url: str) -> None:
        root = server_root(url)
        if self.kinds[url] == "vllm":
            mode = "keep" if self.in_flight == "pause" else "wait"
            status, data = await self.http.call("POST", f"{root}/pause?mode={mode}")
        elif self.in_flight == "pause":
            status, data = await self.http.call("POST", root + "/pause_generation", {"mode": "in_place"})
        else:
            return  # SGLang's update waits for in-flight requests itself
        if not _ok(status, data):
            raise WeightSyncError(f"{url} refused to pause for the weight update: {_why(status, data)}")

    async def _announce(self, url: str, names, dtypes, shapes, version: int) -> str | None:
        root = server_root(url)
        if self.kinds[url] == "vllm":
            status, data = await self.http.call("POST", root + "/update_weights", {"update_info": {
                "names": names, "dtype_names": dtypes, "shapes": shapes, "packed": False}})
        else:
            status, data = await self.http.call("POST", root + "/update_weights_from_distributed", {
                "names": names, "dtypes": dtypes, "shapes": shapes, "group_name": self.group_name,
                "flush_cache": True, "weight_version": str(version)})
        return None if _ok(status, data) else f"weight update failed: {_why(status, data)}"

    async def _resume(self, url: str, version: int) -> None:
        root = server_root(url)
        if self.kinds[url] == "vllm":
            await self.http.call("POST", root + "/update_weight_version", {"new_version": str(version)})
            await self.http.call("POST", root + "/resume")
        elif self.in_flight == "pause":
            await self.http.call("POST", root + "/continue_generation", {})

    async def aclose(self) -> None:
        await self.http.aclose()


def make_weight_sync(rollout_cfg: Any, sync_dir: str | Path) -> Any:
    """The backend of a ``[rollout]`` section (``sync_dir``: resolved by the caller)."""
    if rollout_cfg.sync == "disk":
        return DiskWeightSync(sync_dir, in_flight=rollout_cfg.in_flight, timeout_s=rollout_cfg.sync_timeout_s,
                              keep_versions=rollout_cfg.keep_versions)
    if rollout_cfg.sync == "nccl":
        return NcclWeightSync(in_flight=rollout_cfg.in_flight, timeout_s=rollout_cfg.sync_timeout_s)
    raise ValueError(f"rollout.sync = {rollout_cfg.sync!r}: use 'disk' or 'nccl'")
