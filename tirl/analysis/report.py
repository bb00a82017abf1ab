"""``analyze(path, out_dir)``: the Markdown report (with PNGs) of saved trajectories.

Sections: where the records came from and which entropy was used; tool use (calls per
trajectory, tool-error ratio overall and in correct traces, recovery rate, turns to answer,
response length) overall, per training step and per evaluation; failed calls by kind; the
token-entropy distribution; the top-``top_frac`` highest-entropy tokens split into forking
and reflection tokens (:mod:`tirl.analysis.tokens`) with their most frequent tokens and
example contexts; mean entropy by distance from a tool response.

Entropy, in order of preference (the report says which one it used):
``model`` given → exact, recomputed chunk by chunk with that checkpoint; records with
``top_logprobs`` → a lower bound from the top k; otherwise → the sampled token's surprisal
``−log p`` from the saved behaviour log-probs (unbiased, noisy). Eval *samples* carry no
token ids, so they get the tool-use sections only.

What it does not do: run rollouts, or compare two runs (``benchmarks/roc_ablation.py`` puts
two analyses side by side).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from tirl.analysis.entropy import exact_entropies, surprisal, topk_entropy
from tirl.analysis.load import attach_eval_grades, find_files, latest_checkpoint_dir, read_records
from tirl.analysis.tokens import EntropySplit, TokenSeq, split_high_entropy, steps_after_tool
from tirl.analysis.tooluse import summarize, summarize_by_step, trajectory_stats
from tirl.runs import fmt_cell

TOOL_KEYS = ("calls_per_traj", "tool_error_ratio", "tool_error_ratio_pos", "recovery_rate",
             "call_recovery_rate", "turns_to_answer", "response_len", "accuracy")
ENTROPY_METHODS = {
    "exact": "exact: recomputed with the checkpoint {model} (chunked over the sequence)",
    "topk": "approximate: a lower bound from the saved top-k log-probs (tail mass as one outcome)",
    "surprisal": "estimated: −log p of each sampled token from the saved behaviour log-probs "
                 "(unbiased per position at temperature 1, noisy; give --model for exact entropy)",
}


def _load_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def _load_tokenizer(path: Path | None):
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def token_sequences(records: Sequence[dict], tokenizer=None, model=None,
                    chunk: int = 256) -> tuple[list[TokenSeq], str | None]:
    """(one :class:`TokenSeq` per trajectory record, the entropy method used or None)."""
    if not records:
        return [], None
    if model is not None:
        method = "exact"
    elif any(r.get("top_logprobs") for r in records):
        method = "topk"
    elif any(any(lp != 0.0 for lp in r.get("logprobs") or []) for r in records):
        method = "surprisal"
    else:
        method = None
    seqs = []
    for r in records:
        ids, mask = list(r["response_ids"]), list(r["response_mask"])
        if tokenizer is not None:
            toks = [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
        else:
            toks = [f"<{t}>" for t in ids]
        ents: list[float | None] = [None] * len(ids)
        pol = [i for i, m in enumerate(mask) if m]
        if method == "exact" and pol:
            prompt = list(r["prompt_ids"])
            full = prompt + ids
            vals = exact_entropies(model, full, [len(prompt) + i for i in pol], chunk=chunk)
            for i, h in zip(pol, vals):
                ents[i] = h
        elif method == "topk":
            tops = r.get("top_logprobs") or []
            for i in pol:
                ents[i] = topk_entropy(tops[i]) if i < len(tops) else None
        elif method == "surprisal":
            lps = r.get("logprobs") or []
            for i in pol:
                ents[i] = surprisal(lps[i]) if i < len(lps) else None
        seqs.append(TokenSeq(toks, ents, mask, meta={"label": r.get("_label"), "step": r.get("step")}))
    return seqs, method


# ---------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tool_use(rows: list[tuple[Any, dict]], path: Path, xlabel: str) -> Path | None:
    keys = [k for k in TOOL_KEYS if any(s.get(k) is not None for _, s in rows)]
    if not rows or not keys:
        return None
    plt = _plt()
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    numeric = all(isinstance(k, (int, float)) for k, _ in rows)
    xs = [k for k, _ in rows] if numeric else list(range(len(rows)))
    for ax, key in zip(axes.flat, keys):
        ys = [s.get(key) if s.get(key) is not None else float("nan") for _, s in rows]
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if not numeric:
            ax.set_xticks(xs, [str(k) for k, _ in rows], rotation=30, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_error_kinds(kinds: dict[str, int], path: Path) -> Path | None:
    if not kinds:
        return None
    plt = _plt()
    items = list(kinds.items())[:12]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
    ax.set_xlabel("failed calls")
    ax.set_title("failed calls by kind", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_entropy(seqs: list[TokenSeq], split: EntropySplit, window: int, path: Path) -> Path | None:
    """Histogram of policy-token entropy (threshold marked) and mean entropy by the number of
    policy tokens since the last tool response."""
    ents = [h for s in seqs for h, m in zip(s.entropies, s.mask) if m and h is not None]
    if not ents:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.3))
    a1.hist(ents, bins=50, color="tab:blue", alpha=0.8)
    if not math.isnan(split.threshold):
        a1.axvline(split.threshold, color="tab:red", ls="--", label="top-20% threshold")
        a1.legend(fontsize=8)
    a1.set_xlabel("entropy (nats)")
    a1.set_ylabel("policy tokens")
    a1.set_title("token entropy", fontsize=10)
    span = max(2 * window, 8)
    by_d: dict[int, list[float]] = {}
    first_turn: list[float] = []
    for s in seqs:
        for d, h, m in zip(steps_after_tool(s.mask), s.entropies, s.mask):
            if not m or h is None:
                continue
            if d is None:
                first_turn.append(h)
            elif d < span:
                by_d.setdefault(d, []).append(h)
    if by_d:
        ds = sorted(by_d)
        a2.plot(ds, [sum(by_d[d]) / len(by_d[d]) for d in ds], marker="o", ms=3, label="after a tool response")
    if first_turn:
        a2.axhline(sum(first_turn) / len(first_turn), color="tab:gray", ls=":", label="first turn (mean)")
    a2.axvspan(-0.5, window - 0.5, color="tab:orange", alpha=0.12, label="reflection window")
    a2.set_xlabel("policy tokens since the tool response")
    a2.set_ylabel("mean entropy")
    a2.set_title("entropy after tool feedback", fontsize=10)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# the report


def _table(rows: list[tuple[Any, dict]], first: str) -> list[str]:
    keys = ["trajectories"] + list(TOOL_KEYS)
    out = ["| " + first + " | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for k, s in rows:
        out.append(f"| {k} | " + " | ".join(fmt_cell(s.get(c)) for c in keys) + " |")
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("`", "ˋ")


def analyze(path: str | Path, out_dir: str | Path | None = None, *, model: str | Path | None = None,
            tokenizer: str | Path | None = None, top_frac: float = 0.2, reflection_window: int = 16,
            max_trajectories: int = 400, chunk: int = 256, examples: int = 6) -> Path:
    """Write ``<out_dir>/report.md`` (+ PNGs) for the trajectories or samples at ``path``.

    ``out_dir`` defaults to ``<path>/analysis`` (a directory) or ``<file stem>_analysis``.
    ``model``: a checkpoint directory for exact entropy; its tokenizer decodes the tokens.
    Otherwise the tokenizer is ``tokenizer`` or a run's latest checkpoint. Entropy is
    computed for the last ``max_trajectories`` trajectory records (the latest policy's).
    """
    src = Path(path)
    files = find_files(src)
    records = read_records(files)
    if not records:
        raise ValueError(f"{src}: the JSONL files hold no records ({', '.join(f.name for f in files)})")
    if src.is_dir():
        attach_eval_grades(records, src)
    out = Path(out_dir) if out_dir is not None else (
        src / "analysis" if src.is_dir() else src.with_name(src.stem + "_analysis"))
    out.mkdir(parents=True, exist_ok=True)

    tok_dir = Path(model) if model is not None else (
        Path(tokenizer) if tokenizer is not None else (latest_checkpoint_dir(src) if src.is_dir() else None))
    tok = _load_tokenizer(tok_dir)
    mdl = _load_model(Path(model)) if model is not None else None

    stats = [trajectory_stats(r) for r in records]
    # training records carry their step; everything else (eval_<label>.jsonl of a training
    # run, an eval's trajectories or samples) is grouped by its file's label
    is_eval = [r.get("step") is None or str(r.get("_label", "")).startswith("eval_") for r in records]
    for s, r, e in zip(stats, records, is_eval):
        if e:
            s.step = r.get("_label")
    train_stats = [s for s, e in zip(stats, is_eval) if not e]
    eval_stats = [s for s, e in zip(stats, is_eval) if e]
    overall = summarize(stats)

    lines = [f"# Analysis of `{src}`", "",
             f"{len(records)} records from {len(files)} file(s) "
             f"({sum(r['_kind'] == 'trajectory' for r in records)} trajectories, "
             f"{sum(r['_kind'] == 'sample' for r in records)} eval samples).", ""]
    lines += ["## Tool use", "",
              "recovery_rate: of trajectories with a failed call, the fraction answered correctly; "
              "call_recovery_rate: the fraction with a successful call after the first failure; "
              "tool_error_ratio_pos: failed calls / calls in correct trajectories.", ""]
    lines += _table([("all", overall)], "records") + [""]
    for stats, file, label, heading, first in (
            (train_stats, "tool_use_by_step.png", "training step", "Over training steps", "step"),
            (eval_stats, "tool_use_by_eval.png", "evaluation", "Evaluations", "evaluation")):
        rows = summarize_by_step(stats)
        if rows:
            p = plot_tool_use(rows, out / file, label)
            lines += [f"### {heading}", ""]
            if p:
                lines += [f"![tool use by {label.split()[-1]}]({p.name})", ""]
            lines += _table(rows, first) + [""]
    kinds = overall["error_kinds"]
    lines += ["### Failed calls by kind", ""]
    if kinds:
        p = plot_error_kinds(kinds, out / "error_kinds.png")
        lines += [f"![error kinds]({p.name})", "", "| kind | calls |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in kinds.items()] + [""]
    else:
        lines += ["No failed calls.", ""]

    trajs = [r for r in records if r["_kind"] == "trajectory"][-max_trajectories:]
    lines += ["## Token entropy: forking and reflection tokens (paper §5)", ""]
    seqs, method = token_sequences(trajs, tok, mdl, chunk)
    if not trajs:
        lines += ["No token-level trajectories here (eval samples keep counts and text only); "
                  "rerun the evaluation with `--save-trajectories` for this section.", ""]
    elif method is None:
        lines += ["The trajectories carry no log-probs and no model was given: pass `--model CKPT` "
                  "to recompute the entropy.", ""]
    else:
        split = split_high_entropy(seqs, top_frac=top_frac, reflection_window=reflection_window)
        lines += [f"Entropy: {ENTROPY_METHODS[method].format(model=model)}; over the last "
                  f"{len(trajs)} trajectories"
                  + ("" if tok is not None else " (no tokenizer found: tokens shown as ids)") + ".", "",
                  f"Top {100 * top_frac:.0f}% highest-entropy policy tokens: {len(split.tokens)} of "
                  f"{split.n_policy_tokens} (entropy ≥ {split.threshold:.3f} nats). A *reflection* token "
                  f"lies within the first {reflection_window} tokens the model writes after a tool "
                  "response; every other one is a *forking* token (the model's own reasoning).", "",
                  f"- reflection tokens: {len(split.of_kind('reflection'))} "
                  f"({100 * split.reflection_share:.1f}% of the high-entropy tokens; "
                  f"{100 * split.reflection_base_rate:.1f}% of all policy tokens lie in those windows)",
                  f"- forking tokens: {len(split.of_kind('forking'))}", ""]
        p = plot_entropy(seqs, split, reflection_window, out / "entropy.png")
        if p:
            lines += [f"![entropy]({p.name})", ""]
        for kind in ("forking", "reflection"):
            lines += [f"### {kind.capitalize()} tokens", "", "| token | count |", "|---|---|"]
            lines += [f"| `{_md_escape(repr(t))}` | {c} |" for t, c in split.most_common(kind)]
            ex = sorted(split.of_kind(kind), key=lambda t: -t.entropy)[:examples]
            if ex:
                lines += ["", "Examples (highest entropy first; the token in [[ ]]):", ""]
                lines += [f"- H={t.entropy:.2f}: `{_md_escape(t.context)}`" for t in ex]
            lines += [""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def run_analyze(path: str | Path, model: str | Path | None = None, out: str | Path | None = None,
                top_frac: float = 0.2, reflection_window: int = 16) -> int:
    """The ``tirl analyze RUN_OR_SAMPLES [--model CKPT] [-o OUT]`` entry point: writes the
    report, prints its path; a bad path or empty input prints the reason and returns 2."""
    import sys

    try:
        report = analyze(path, out, model=model, top_frac=top_frac, reflection_window=reflection_window)
    except (FileNotFoundError, ValueError) as err:
        print(f"tirl analyze: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0
