"""`tirl doctor` checks for evaluation: which benchmarks load offline here (no sampling)."""

from __future__ import annotations

from tirl.health import Check


def checks() -> list[Check]:
    from tirl.data.benchmarks import (KNOWN_BENCHMARKS, BenchmarkError, load_problems,
                                      resolve_data_dir)

    data_dir = None  # the files shipped with tirl
    out = []
    found, missing = [], []
    for name in KNOWN_BENCHMARKS:
        try:
            found.append(f"{name} ({len(load_problems(name, data_dir=data_dir, hub=False))})")
        except BenchmarkError:
            missing.append(name)
    where = resolve_data_dir(data_dir)
    detail = f"{', '.join(found) or 'none'} from {where or data_dir}"
    if missing:
        detail += (f"; not found offline: {', '.join(missing)} (set [data] data_dir / --data-dir, "
                   "pip install champ-dataset for champ, or allow the Hugging Face Hub)")
    gated = [m for m in missing if m == "gpqa_diamond"]  # never shipped: gated on the Hub
    if gated:
        detail += " (gpqa_diamond is gated: HF_TOKEN and Hub access, or its file in the data dir)"
    out.append(Check("eval: offline benchmarks", not [m for m in missing if m not in gated], detail))
    try:
        import matplotlib  # noqa: F401

        out.append(Check("eval: report plots (matplotlib)", True, "ok"))
    except ImportError:
        out.append(Check("eval: report plots (matplotlib)", False, "missing: pip install matplotlib"))
    return out
