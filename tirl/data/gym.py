"""Problems from reasoning-gym datasets (``data.source = "reasoning_gym"``), integer answers only.

``reasoning_gym_problems(tasks, size, held_out_size, seed)`` draws from each named dataset
(e.g. ``basic_arithmetic``, ``gcd``, ``lcm``, ``prime_factorization``) round-robin and keeps
problems whose answer is an integer (§2.2.1: verifiers misjudge other forms). Held-out
problems come from a different seed and are removed from training.

What it does not do: pass each dataset's configuration knobs (defaults are used) or keep
non-integer answers.
"""

from __future__ import annotations


def _is_int(s: str) -> bool:
    s = str(s).strip()
    return s.lstrip("-").isdigit()


def _draw(tasks: list[str], n: int, seed: int, prefix: str) -> list[dict]:
    import reasoning_gym

    out: list[dict] = []
    per = max(1, n // max(1, len(tasks)) * 3)
    for t in tasks:
        try:
            ds = reasoning_gym.create_dataset(t, size=per, seed=seed)
        except Exception as err:  # an unknown name: say which and what exists
            raise ValueError(f"reasoning-gym dataset {t!r} could not be created: {err}") from None
        for item in ds:
            if _is_int(item["answer"]):
                out.append({"problem": item["question"], "answer": str(item["answer"]).strip(),
                            "source": f"reasoning_gym:{t}"})
    # interleave tasks, keep n
    out = out[:]
    return [dict(p, id=f"{prefix}{i}") for i, p in enumerate(out[:n])]


def reasoning_gym_problems(tasks: list[str], size: int, held_out_size: int, seed: int):
    held = _draw(tasks, held_out_size, seed + 10_000, "held") if held_out_size else []
    texts = {p["problem"] for p in held}
    train = [p for p in _draw(tasks, size + held_out_size, seed, "train") if p["problem"] not in texts][:size]
    return train, held
