"""``tirl view``: a local web app over a training run or an eval output.

An overview (metrics as interactive charts, the resolved config, the report, plots), a
trajectory browser (filters, text search, turn-by-turn rendering with per-token log-prob /
entropy colouring) and side-by-side views (one problem's GRPO group; one problem across two
runs or eval outputs). Pages are plain HTML/JS/CSS shipped in ``static/`` (no CDN, works
offline); the server is aiohttp (``server.py``); big JSONL files are read lazily through a
byte-offset index (``index.py``); only files under the given directories are served
(``rundir.safe_path``).

What it does not do: authenticate, edit runs, or run anything from a run (it only reads).
"""

from tirl.view.server import make_app, run_view, start_view

__all__ = ["make_app", "run_view", "start_view"]
