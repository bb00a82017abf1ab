"""Training problems named by ``[data]``: procedural, reasoning-gym, or a file/benchmark.

:func:`load_problem_sets` returns ``(training problems, held-out problems)``, each a list of
``{"id", "problem", "answer", ...}`` dicts, deterministic for a seed.
"""

from __future__ import annotations

import random

from tirl.data.config import DataConfig


def load_problem_sets(d: DataConfig, seed: int, tasks: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(training problems, held-out problems); ``tasks`` overrides ``d.tasks`` (a stage's)."""
    tasks = list(tasks) if tasks else list(d.tasks)
    if d.source == "procedural":
        from tirl.data.procedural import train_and_held_out

        return train_and_held_out(tasks, d.size, d.held_out_size, seed)
    if d.source in ("file", "benchmark"):
        from tirl.data.benchmarks import load_problems

        if not d.path:
            raise ValueError(f"data.source = {d.source!r} needs data.path (a file or benchmark name)")
        rows = load_problems(d.path, data_dir=d.data_dir, problem_field=d.problem_field,
                             answer_field=d.answer_field)
        if d.integer_answers_only:
            rows = [r for r in rows if str(r["answer"]).strip().lstrip("-").isdigit()]
        rng = random.Random(f"tirl-split-{seed}")
        rows = list(rows)
        rng.shuffle(rows)
        held = rows[:d.held_out_size]
        return rows[d.held_out_size:d.held_out_size + d.size], held
    if d.source == "reasoning_gym":
        from tirl.data.gym import reasoning_gym_problems

        return reasoning_gym_problems(tasks, d.size, d.held_out_size, seed)
    raise ValueError(f"data.source = {d.source!r} is not supported")
