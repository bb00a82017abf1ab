"""Reading an inference engine's live load: KV usage, running and queued requests, capacity.

Parsers are pure functions over the text or JSON the servers really emit:

* Prometheus text from ``/metrics`` of
  - vLLM V1 (``vllm:kv_cache_usage_perc``) and V0 (``vllm:gpu_cache_usage_perc``), with
    ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` and the capacity from
    ``vllm:cache_config_info{num_gpu_blocks, block_size}``; ``tirl serve`` uses these names;
  - SGLang (``sglang:token_usage``, ``sglang:num_used_tokens``,
    ``sglang:max_total_num_tokens``, ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``);
  - llama.cpp (``llamacpp:kv_cache_usage_ratio``, ``llamacpp:kv_cache_tokens`` in older
    builds; ``llamacpp:requests_processing`` / ``llamacpp:requests_deferred``);
* SGLang's ``/get_load`` JSON: the old ``{"load": used_tokens}`` and the newer list of
  ``{"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens" | "num_pages"}``;
* llama.cpp's ``/slots`` JSON (capacity = sum of ``n_ctx``; running = busy slots).

:func:`fetch_engine_metrics` tries ``/metrics`` and falls back to ``/get_load`` and
``/slots``. What it does not do: keep history, or guess a capacity the server does not
report (configure ``kv_capacity_tokens`` then).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
# labels that only say which shard of one engine reported (same value on every shard)
_SHARD_LABELS = {"tp_rank", "pp_rank", "moe_ep_rank", "dp_rank_local"}


@dataclass
class EngineMetrics:
    """One reading of an engine's load; None where the server does not say."""

    source: str  # "vllm" | "sglang" | "llamacpp" | "sglang_get_load" | "llamacpp_slots"
    kv_used_fraction: float | None = None
    kv_used_tokens: int | None = None
    kv_capacity_tokens: int | None = None
    running: int | None = None
    waiting: int | None = None

    def used_tokens(self, capacity: int | None = None) -> int | None:
        """KV tokens in use: reported directly, else fraction × capacity."""
        if self.kv_used_tokens is not None:
            return self.kv_used_tokens
        cap = capacity if capacity is not None else self.kv_capacity_tokens
        if self.kv_used_fraction is not None and cap:
            return int(round(self.kv_used_fraction * cap))
        return None


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_prometheus(text: str) -> Samples:
    """Prometheus exposition text → {metric name: [(labels, value), ...]} (comments skipped)."""
    out: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, labels_text, value_text = m.groups()
        try:
            value = float(value_text)
        except ValueError:
            continue
        labels = dict(_LABEL.findall(labels_text)) if labels_text else {}
        out.setdefault(name, []).append((labels, value))
    return out


def _total(samples: Samples, name: str) -> float | None:
    """Sum over engines of a count gauge, counting a value repeated per shard once."""
    rows = samples.get(name)
    if not rows:
        return None
    groups: dict[tuple, float] = {}
    for labels, value in rows:
        if math.isnan(value):
            continue
        key = tuple(sorted((k, v) for k, v in labels.items() if k not in _SHARD_LABELS))
        groups[key] = max(groups.get(key, value), value)
    return sum(groups.values()) if groups else None


def _mean(samples: Samples, name: str) -> float | None:
    rows = [v for _, v in samples.get(name, []) if not math.isnan(v)]
    return sum(rows) / len(rows) if rows else None


def _int(x: float | None) -> int | None:
    return None if x is None else int(round(x))


def metrics_from_prometheus(text: str) -> EngineMetrics | None:
    """Load from a ``/metrics`` page of vLLM, SGLang, llama.cpp or ``tirl serve``; None if unknown."""
    s = parse_prometheus(text)
    if any(k.startswith("vllm:") for k in s):
        usage = _mean(s, "vllm:kv_cache_usage_perc")
        if usage is None:
            usage = _mean(s, "vllm:gpu_cache_usage_perc")
        capacity = None
        total = 0
        for labels, _ in s.get("vllm:cache_config_info", []):
            try:
                total += int(labels["num_gpu_blocks"]) * int(labels["block_size"])
            except (KeyError, ValueError):
                continue
        capacity = total or None
        return EngineMetrics(
            source="vllm",
            kv_used_fraction=usage,
            kv_capacity_tokens=capacity,
            running=_int(_total(s, "vllm:num_requests_running")),
            waiting=_int(_total(s, "vllm:num_requests_waiting")),
        )
    if any(k.startswith("sglang:") for k in s):
        capacity = _int(_total(s, "sglang:max_total_num_tokens"))
        used = _int(_total(s, "sglang:num_used_tokens"))
        usage = _mean(s, "sglang:token_usage")
        return EngineMetrics(
            source="sglang",
            kv_used_fraction=usage,
            kv_used_tokens=used,
            kv_capacity_tokens=capacity,
            running=_int(_total(s, "sglang:num_running_reqs")),
            waiting=_int(_total(s, "sglang:num_queue_reqs")),
        )
    if any(k.startswith("llamacpp:") for k in s):
        ratio = _mean(s, "llamacpp:kv_cache_usage_ratio")
        used = _int(_total(s, "llamacpp:kv_cache_tokens"))
        capacity = None
        if ratio and used:
            capacity = int(round(used / ratio))
        return EngineMetrics(
            source="llamacpp",
            kv_used_fraction=ratio,
            kv_used_tokens=used,
            kv_capacity_tokens=capacity,
            running=_int(_total(s, "llamacpp:requests_processing")),
            waiting=_int(_total(s, "llamacpp:requests_deferred")),
        )
    return None


def metrics_from_sglang_load(data: Any) -> EngineMetrics:
    """SGLang ``/get_load`` JSON (either shape) → load. Pages count as tokens (page size 1)."""
    if isinstance(data, dict) and "load" in data:
        return EngineMetrics(source="sglang_get_load", kv_used_tokens=int(data["load"]))
    if isinstance(data, dict) and "loads" in data:
        data = data["loads"]
    if not isinstance(data, list):
        raise ValueError(f"unrecognised SGLang /get_load answer: {str(data)[:200]!r}")
    running = waiting = tokens = 0
    for rank in data:
        running += int(rank.get("num_reqs", 0))
        waiting += int(rank.get("num_waiting_reqs", 0))
        tokens += int(rank.get("num_tokens", rank.get("num_pages", 0)))
    return EngineMetrics(source="sglang_get_load", kv_used_tokens=tokens, running=running, waiting=waiting)


def metrics_from_llamacpp_slots(data: Any) -> EngineMetrics:
    """llama.cpp ``/slots`` JSON → load (capacity = total context of all slots)."""
    if not isinstance(data, list):
        raise ValueError(f"unrecognised llama.cpp /slots answer: {str(data)[:200]!r}")
    capacity = running = used = 0
    for slot in data:
        capacity += int(slot.get("n_ctx", 0))
        busy = slot.get("is_processing")
        if busy is None:  # older builds: state 0 = idle
            busy = slot.get("state", 0) != 0
        running += bool(busy)
        if busy:
            if slot.get("n_past"):
                used += int(slot["n_past"])
            else:
                decoded = (slot.get("next_token") or {}).get("n_decoded", 0)
                used += int(slot.get("n_prompt_tokens", 0) or 0) + int(decoded or 0)
    return EngineMetrics(
        source="llamacpp_slots",
        kv_capacity_tokens=capacity or None,
        kv_used_tokens=used,
        running=running,
    )


def server_root(base_url: str) -> str:
    """``http://h:p/v1`` → ``http://h:p`` (metrics live at the server root)."""
    url = base_url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


async def fetch_engine_metrics(session: Any, base_url: str, timeout_s: float = 2.0) -> EngineMetrics:
    """Read an engine's load over HTTP with an ``aiohttp.ClientSession``.

    Tries ``/metrics``, then SGLang's ``/get_load``, then llama.cpp's ``/slots``; raises
    the last error (connection refused, timeout, HTTP status) when none answers.
    """
    import aiohttp

    root = server_root(base_url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    last: Exception | None = None
    for path in ("/metrics", "/get_load", "/slots"):
        try:
            async with session.get(root + path, timeout=timeout) as resp:
                if resp.status != 200:
                    last = RuntimeError(f"GET {root}{path} answered HTTP {resp.status}")
                    continue
                body = await resp.text()
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as err:
            raise ConnectionError(f"engine at {root} does not answer: {err!r}") from err
        except aiohttp.ClientError as err:
            last = err
            continue
        if path == "/metrics":
            m = metrics_from_prometheus(body)
            if m is not None and m.source == "llamacpp" and m.kv_capacity_tokens is None:
                m = await _with_llamacpp_slots(session, root, timeout, m)
            if m is not None:
                return m
            last = RuntimeError(f"{root}/metrics has no vllm:, sglang: or llamacpp: metrics")
            continue
        try:
            data = json.loads(body)
            return metrics_from_sglang_load(data) if path == "/get_load" else metrics_from_llamacpp_slots(data)
        except (ValueError, TypeError, AttributeError) as err:
            last = err
    assert last is not None
    raise last


async def _with_llamacpp_slots(session: Any, root: str, timeout: Any, m: EngineMetrics) -> EngineMetrics:
    """Newer llama.cpp builds export no KV gauges: take capacity and usage from ``/slots``."""
    import aiohttp

    try:
        async with session.get(root + "/slots", timeout=timeout) as resp:
            if resp.status != 200:
                return m
            slots = metrics_from_llamacpp_slots(json.loads(await resp.text()))
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError):
        return m
    m.kv_capacity_tokens = slots.kv_capacity_tokens
    if m.kv_used_tokens is None:
        m.kv_used_tokens = slots.kv_used_tokens
    return m
