"""A PNG comparing dispatch policies across scenarios (makespan, busy fraction, recompute)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from tirl.dispatch.sim import SimResult


def plot_comparison(results: Mapping[str, Mapping[str, SimResult]], path: str | Path) -> Path:
    """One row per scenario: makespan, engine busy fraction, recomputed tokens per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.2 * rows), squeeze=False)
    for r, (scenario, by_policy) in enumerate(results.items()):
        names = list(by_policy)
        colors = ["#888888" if n != "kv" and not n.startswith("kv") else "#1f77b4" for n in names]
        panels = [
            ("makespan (s)", [by_policy[n].makespan_s for n in names]),
            ("engine busy fraction", [by_policy[n].busy_fraction for n in names]),
            ("recomputed tokens (M)", [by_policy[n].recomputed_tokens / 1e6 for n in names]),
        ]
        for c, (title, values) in enumerate(panels):
            ax = axes[r][c]
            ax.bar(range(len(names)), values, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_title(f"{scenario}: {title}", fontsize=9)
            if title.startswith("engine busy"):
                ax.set_ylim(0, 1)
                ax.axhline(0.9, color="red", lw=0.8, ls="--")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
