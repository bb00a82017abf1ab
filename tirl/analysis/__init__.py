"""What RL taught the policy, read from saved trajectories (``tirl analyze``).

* :mod:`tirl.analysis.load` — finds and reads training ``trajectories/``, eval ``trajectories/``
  or ``samples/`` JSONL;
* :mod:`tirl.analysis.tooluse` — calls per trajectory, failed calls by kind, recovery rate,
  turns to answer, over training steps;
* :mod:`tirl.analysis.entropy` — per-token entropy: exact with a checkpoint (chunked), a
  lower bound from top-k log-probs, or the sampled token's surprisal;
* :mod:`tirl.analysis.tokens` — the top 20% highest-entropy tokens split into forking and
  reflection tokens (paper §5);
* :mod:`tirl.analysis.report` — :func:`analyze`, the Markdown report with PNGs.

What it does not do: generate rollouts or train; it only reads what runs saved.
"""

from tirl.analysis.report import analyze, run_analyze

__all__ = ["analyze", "run_analyze"]
