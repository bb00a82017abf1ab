"""Parsing of the load that real inference servers report (fixtures: their real formats)."""

import json
from pathlib import Path

import pytest

from tirl.dispatch.metrics import (
    metrics_from_llamacpp_slots,
    metrics_from_prometheus,
    metrics_from_sglang_load,
    parse_prometheus,
    server_root,
)

FIX = Path(__file__).parent / "fixtures"


def text(name: str) -> str:
    return (FIX / name).read_text()


def test_prometheus_parser_keeps_labels_and_skips_comments():
    s = parse_prometheus(text("vllm_v1_metrics.txt"))
    (labels, value), = s["vllm:kv_cache_usage_perc"]
    assert labels == {"engine": "0", "model_name": "Qwen/Qwen3-14B"}
    assert value == pytest.approx(0.6125)
    assert s["vllm:prefix_cache_queries_total"][0][1] == 1.284e6
    assert not any(k.startswith("#") for k in s)
    # a trailing timestamp is not the value
    g = parse_prometheus(text("sglang_metrics.txt"))["sglang:gen_throughput"]
    assert g[0][1] == pytest.approx(1534.2)


def test_vllm_v1_usage_queue_and_capacity():
    m = metrics_from_prometheus(text("vllm_v1_metrics.txt"))
    assert m.source == "vllm"
    assert m.kv_used_fraction == pytest.approx(0.6125)
    assert m.kv_capacity_tokens == 30000 * 16
    assert (m.running, m.waiting) == (37, 2)
    assert m.used_tokens() == round(0.6125 * 480000)


def test_vllm_v0_uses_gpu_cache_usage_perc():
    m = metrics_from_prometheus(text("vllm_v0_metrics.txt"))
    assert m.kv_used_fraction == pytest.approx(0.5)
    assert m.kv_capacity_tokens == 5120 * 16
    assert (m.running, m.waiting) == (2, 1)


def test_vllm_without_cache_config_has_unknown_capacity():
    m = metrics_from_prometheus('vllm:kv_cache_usage_perc{engine="0"} 0.25\nvllm:num_requests_running{engine="0"} 3\n')
    assert m.kv_capacity_tokens is None and m.waiting is None
    assert m.used_tokens() is None  # no capacity, no absolute count
    assert m.used_tokens(capacity=1000) == 250


def test_vllm_data_parallel_engines_are_summed():
    body = (
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4\n'
    )
    m = metrics_from_prometheus(body)
    assert m.running == 7
    assert m.kv_used_fraction == pytest.approx(0.3)


def test_sglang_prometheus_counts_tensor_parallel_shards_once():
    m = metrics_from_prometheus(text("sglang_metrics.txt"))
    assert m.source == "sglang"
    assert m.kv_capacity_tokens == 262144  # not 2 × (two tp ranks report the same pool)
    assert m.kv_used_tokens == 131072
    assert m.kv_used_fraction == pytest.approx(0.5)
    assert (m.running, m.waiting) == (24, 0)


@pytest.mark.parametrize(
    "name,used,running,waiting",
    [
        ("sglang_get_load_list.json", 40960 + 30720, 22, 3),
        ("sglang_get_load_pages.json", 2048, 5, 1),
        ("sglang_get_load_old.json", 98304, None, None),
    ],
)
def test_sglang_get_load_every_shape(name, used, running, waiting):
    m = metrics_from_sglang_load(json.loads(text(name)))
    assert (m.kv_used_tokens, m.running, m.waiting) == (used, running, waiting)


def test_sglang_get_load_rejects_unknown_shapes_by_name():
    with pytest.raises(ValueError, match="get_load"):
        metrics_from_sglang_load("busy")


def test_llamacpp_old_metrics_give_usage_and_derived_capacity():
    m = metrics_from_prometheus(text("llamacpp_metrics_old.txt"))
    assert m.source == "llamacpp"
    assert m.kv_used_fraction == pytest.approx(0.25)
    assert m.kv_used_tokens == 1024
    assert m.kv_capacity_tokens == 4096
    assert (m.running, m.waiting) == (2, 1)


def test_llamacpp_new_metrics_have_queue_but_no_kv():
    m = metrics_from_prometheus(text("llamacpp_metrics_new.txt"))
    assert (m.running, m.waiting) == (1, 0)
    assert m.kv_used_fraction is None and m.kv_capacity_tokens is None


def test_llamacpp_slots():
    m = metrics_from_llamacpp_slots(json.loads(text("llamacpp_slots.json")))
    assert m.kv_capacity_tokens == 16384
    assert m.running == 1
    assert m.kv_used_tokens == 311


def test_unknown_metrics_page_is_none():
    assert metrics_from_prometheus("process_cpu_seconds_total 12.5\n") is None


def test_server_root_strips_v1():
    assert server_root("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert server_root("http://h:1") == "http://h:1"
