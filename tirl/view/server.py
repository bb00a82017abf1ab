"""The ``tirl view`` web app (aiohttp): a JSON API over run / eval directories + static pages.

Routes (all GET; ``src`` is ``<root>:<relative path>``, e.g. ``a:trajectories/step_3.jsonl``):

- ``/`` and ``/static/<file>``: the page (assets ship in ``tirl/view/static``, no CDN);
- ``/api/roots``: the served directories (``a``, and ``b`` when comparing), each described
  (config, report, plots, record files);
- ``/api/metrics?root=a``: the records of ``metrics.jsonl``;
- ``/api/list?src=…&step=&problem=&correct=&finish=&error=&kept=&stage=&q=&offset=&limit=&after=``:
  one page of record summaries matching the filters, and how much of the file is indexed;
- ``/api/record?src=…&i=N``: one full record, its final answer and (with a tokenizer) the
  text of each response token;
- ``/api/group?src=…&problem=P[&step=S]``: every record of one problem (a GRPO group);
- ``/files/<root>/<path>``: a file under that directory (plots), never outside it.

Record files are indexed lazily (``tirl.view.index``): opening one scans line offsets,
then summaries for the filters fill in the background off the event loop while pages are
already served. Files that grow (a live run) are re-indexed on the next request.

What it does not do: authenticate (it binds loopback by default; do not expose it), write
into the served directories, or decode tokens without a ``tokenizer.json`` (token colouring
then shows token ids).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from tirl.view.index import Filter, JsonlIndex, Summaries, record_kind, search
from tirl.view.rundir import (UnsafePath, ViewError, check_root, describe, list_sources,
                              read_metrics_records, safe_path)

SCAN_BYTES = 64 << 20  # bytes of a record file indexed per step (the first step is in the request)
SUMMARY_CHUNKS = (500, 4000)  # records summarized per step of the background task: first, then
MAX_PAGE = 500
MAX_GROUP = 256
STATIC_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css",
                ".svg": "image/svg+xml", ".txt": "text/plain"}


class BadRequest(web.HTTPBadRequest):
    """A 400 with a JSON ``{"error": ...}`` body naming the bad parameter."""

    def __init__(self, message: str):
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


@dataclass
class Source:
    """One JSONL file of records: its index, its summaries and the task filling them."""

    path: Path
    index: JsonlIndex
    summaries: Summaries = field(default_factory=Summaries)
    task: asyncio.Task | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.index.at_end and self.summaries.done >= len(self.index)


class ViewState:
    """The served directories and the record files opened so far."""

    def __init__(self, roots: dict[str, Path], tokenizer: str | Path | None = None):
        self.roots = roots
        self.sources: dict[str, Source] = {}
        self._open_lock = asyncio.Lock()
        self._tokenizer_path = Path(tokenizer) if tokenizer else None
        self._tokenizers: dict[str, Any] = {}

    # ---- sources ----
    def split_src(self, src: str) -> tuple[str, Path, str]:
        root_id, sep, rel = (src or "").partition(":")
        if not sep or root_id not in self.roots:
            raise BadRequest(f"src {src!r} must be <root>:<path> with root one of {', '.join(self.roots)}")
        root = self.roots[root_id]
        try:
            path = safe_path(root, rel)
        except UnsafePath as err:
            raise web.HTTPForbidden(text=json.dumps({"error": str(err)}), content_type="application/json")
        if path.suffix != ".jsonl" or not path.is_file():
            raise web.HTTPNotFound(text=json.dumps({"error": f"no JSONL file {rel!r} under {root_id}"}),
                                   content_type="application/json")
        return root_id, path, rel

    async def source(self, src: str) -> Source:
        _, path, _ = self.split_src(src)
        key = str(path)
        async with self._open_lock:
            s = self.sources.get(key)
            if s is None:
                # the first SCAN_BYTES now (a page is ready at once); the background task
                # indexes the rest of a big file
                index = await asyncio.to_thread(JsonlIndex, path, SCAN_BYTES)
                s = self.sources[key] = Source(path, index)
            elif s.index.at_end:  # appended lines of a live run (or a rewrite)
                gen = s.index.generation
                await asyncio.to_thread(s.index.refresh, SCAN_BYTES)
                if s.index.generation != gen:  # rewritten (e.g. compacted): summaries start over
                    if s.task is not None:
                        s.task.cancel()
                        await asyncio.gather(s.task, return_exceptions=True)
                    s.summaries, s.task, s.error = Summaries(), None, None
        if not s.complete and (s.task is None or s.task.done()):
            s.task = asyncio.create_task(self._summarize(s))
        return s

    async def _summarize(self, s: Source) -> None:
        try:
            while not s.complete:
                if not s.index.at_end and s.summaries.done > 0:
                    # after the first summaries, finish the offsets: the record count comes early
                    await asyncio.to_thread(s.index.refresh, SCAN_BYTES)
                    continue
                start = s.summaries.done
                stop = min(len(s.index), start + SUMMARY_CHUNKS[start > 0])
                if stop > start:
                    await asyncio.to_thread(s.summaries.add_range, s.index, start, stop)
                else:  # no complete line yet in what was scanned
                    await asyncio.to_thread(s.index.refresh, SCAN_BYTES)
        except Exception as err:  # noqa: BLE001 — shown in the page, not silently dropped
            s.error = f"{type(err).__name__}: {err}"
            print(f"tirl view: indexing {s.path} failed: {s.error}", file=sys.stderr)

    async def wait_summarized(self, s: Source, timeout: float) -> None:
        """Wait up to ``timeout`` s for the summaries (small files finish within a request)."""
        if s.task is not None and not s.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(s.task), timeout)
            except asyncio.TimeoutError:
                pass

    # ---- tokens ----
    def tokenizer_for(self, root_id: str) -> Any:
        if root_id in self._tokenizers:
            return self._tokenizers[root_id]
        path = self._tokenizer_path
        if path is not None and path.is_dir():
            path = path / "tokenizer.json"
        if path is None:
            cands = sorted(self.roots[root_id].glob("checkpoints/*/tokenizer.json"),
                           key=lambda p: p.stat().st_mtime)
            path = cands[-1] if cands else None
        tok = None
        if path is not None and path.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path))
        self._tokenizers[root_id] = tok
        return tok

    async def close(self) -> None:
        for s in self.sources.values():
            if s.task is not None:
                s.task.cancel()
        tasks = [s.task for s in self.sources.values() if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# request parsing (pure)


def _opt_int(q: dict, name: str) -> int | None:
    v = q.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise BadRequest(f"{name}={v!r} must be an integer") from None


def _opt_bool(q: dict, name: str) -> bool | None:
    v = q.get(name)
    if v in (None, "", "any"):
        return None
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise BadRequest(f"{name}={v!r} must be true or false")


def parse_filter(q: dict) -> Filter:
    """The :class:`Filter` of a query string (empty values mean "any")."""
    return Filter(step=_opt_int(q, "step"), problem=q.get("problem") or None,
                  correct=_opt_bool(q, "correct"), finish=q.get("finish") or None,
                  error=q.get("error") or None, kept=_opt_bool(q, "kept"), stage=q.get("stage") or None)


def _finite(x: Any) -> Any:
    """NaN/inf (not JSON) to None, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(_finite(data), allow_nan=False), content_type="application/json")


def final_answer(rec: dict[str, Any]) -> str | None:
    if isinstance(rec.get("answer"), str):
        return rec["answer"]
    text = rec.get("text")
    if not isinstance(text, str):
        return None
    from tirl.reward.extract import extract_answer

    return extract_answer(text)


# ---------------------------------------------------------------------------------------
# handlers

STATE: web.AppKey[ViewState] = web.AppKey("tirl_view_state", ViewState)


def make_app(roots: dict[str, Path], tokenizer: str | Path | None = None) -> web.Application:
    """The app over ``roots`` (``{"a": run_dir, "b": other_dir}``; paths already checked)."""
    state = ViewState(roots, tokenizer)
    app = web.Application()
    app[STATE] = state

    async def on_cleanup(_app: web.Application) -> None:
        await state.close()

    app.on_cleanup.append(on_cleanup)

    static = resources.files("tirl.view") / "static"

    async def page(_req: web.Request) -> web.Response:
        return web.Response(body=(static / "index.html").read_bytes(), content_type="text/html")

    async def static_file(req: web.Request) -> web.Response:
        name = req.match_info["name"]
        if "/" in name or "\\" in name or name.startswith(".") or Path(name).suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        f = static / name
        if not f.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=f.read_bytes(), content_type=STATIC_TYPES[Path(name).suffix],
                            headers={"Cache-Control": "no-cache"})

    async def api_roots(_req: web.Request) -> web.Response:
        out = {}
        for rid, root in roots.items():
            out[rid] = {"path": str(root), **await asyncio.to_thread(describe, root)}
        return _json(out)

    async def api_metrics(req: web.Request) -> web.Response:
        rid = req.query.get("root", "a")
        if rid not in roots:
            raise BadRequest(f"root {rid!r} is not one of {', '.join(roots)}")
        recs = await asyncio.to_thread(read_metrics_records, roots[rid] / "metrics.jsonl")
        return _json({"records": recs})

    async def api_list(req: web.Request) -> web.Response:
        q = dict(req.query)
        s = await state.source(q.get("src", ""))
        flt = parse_filter(q)
        offset = max(0, _opt_int(q, "offset") or 0)
        limit = min(MAX_PAGE, max(1, _opt_int(q, "limit") or 50))
        text = (q.get("q") or "").strip()
        next_after = None
        if flt == Filter() and not text:
            # unfiltered: any page is a slice of the file, summarized now if the background
            # task has not reached it yet (a big file's first page needs no full pass); the
            # answer reports the count this page was cut from, while indexing goes on
            counting, records = not s.index.at_end, len(s.index)
            stop = min(records, offset + limit)
            rows = await asyncio.to_thread(s.summaries.rows, s.index, range(offset, stop))
            total = records
        else:
            await state.wait_summarized(s, 0.5)  # small files: complete answers at once
            counting, records = not s.index.at_end, len(s.index)
            ids = s.summaries.select(flt)
            if text:
                after = _opt_int(q, "after")
                page_ids, next_after = await asyncio.to_thread(search, s.index, ids, text,
                                                               -1 if after is None else after, limit)
                total = None
            else:
                page_ids, total = ids[offset:offset + limit], int(len(ids))
            rows = [s.summaries.row(int(i)) for i in page_ids]
        return _json({"rows": rows, "total": total, "offset": offset, "next_after": next_after,
                      "records": records, "summarized": s.summaries.done,
                      "indexed_bytes": s.index.scanned_bytes, "bytes": s.index.size,
                      "counting": counting,
                      "facets": s.summaries.facets(), "error": s.error})

    async def api_record(req: web.Request) -> web.Response:
        src = req.query.get("src", "")
        s = await state.source(src)
        i = _opt_int(dict(req.query), "i")
        if i is None or not 0 <= i < len(s.index):
            raise web.HTTPNotFound(text=json.dumps({"error": f"no record i={i} (the file has {len(s.index)})"}),
                                   content_type="application/json")
        rec = await asyncio.to_thread(s.index.read, i)
        tokens = None
        ids = rec.get("response_ids")
        if isinstance(ids, list) and ids:
            tok = await asyncio.to_thread(state.tokenizer_for, src.partition(":")[0])
            if tok is not None:
                tokens = await asyncio.to_thread(lambda: tok.decode_batch([[int(t)] for t in ids],
                                                                          skip_special_tokens=False))
        return _json({"i": i, "src": src, "kind": record_kind(rec), "record": rec,
                      "final_answer": final_answer(rec), "tokens": tokens})

    async def api_group(req: web.Request) -> web.Response:
        q = dict(req.query)
        s = await state.source(q.get("src", ""))
        if not q.get("problem"):
            raise BadRequest("problem= is required")
        await state.wait_summarized(s, 5.0)
        ids = s.summaries.select(Filter(problem=q["problem"], step=_opt_int(q, "step")))
        ids = ids[:MAX_GROUP]
        recs = await asyncio.to_thread(s.index.read_many, [int(i) for i in ids])
        for rec in recs:  # a group view does not need per-token arrays
            for k in ("prompt_ids", "response_ids", "response_mask", "logprobs", "entropy"):
                rec.pop(k, None)
        items = [{"i": int(i), "summary": s.summaries.row(int(i)), "record": r,
                  "final_answer": final_answer(r)} for i, r in zip(ids, recs)]
        return _json({"items": items, "summarized": s.summaries.done, "records": len(s.index),
                      "truncated": len(ids) >= MAX_GROUP})

    async def files(req: web.Request) -> web.StreamResponse:
        rid = req.match_info["root"]
        if rid not in roots:
            raise web.HTTPNotFound()
        try:
            p = safe_path(roots[rid], req.match_info["path"])
        except UnsafePath as err:
            raise web.HTTPForbidden(text=str(err))
        if not p.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(p)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/api/roots", api_roots)
    app.router.add_get("/api/metrics", api_metrics)
    app.router.add_get("/api/list", api_list)
    app.router.add_get("/api/record", api_record)
    app.router.add_get("/api/group", api_group)
    app.router.add_get("/files/{root}/{path:.*}", files)
    return app


def resolve_roots(path: str | Path, compare: str | Path | None = None) -> dict[str, Path]:
    """``{"a": path}`` (plus ``"b"``: the directory to compare with), each checked."""
    roots = {"a": check_root(path)}
    if compare is not None:
        roots["b"] = check_root(compare)
    return roots


async def start_view(path: str | Path, host: str = "127.0.0.1", port: int = 0,
                     compare: str | Path | None = None,
                     tokenizer: str | Path | None = None) -> tuple[web.AppRunner, str]:
    """Start the app; returns the runner (``await runner.cleanup()`` stops it) and its URL."""
    runner = web.AppRunner(make_app(resolve_roots(path, compare), tokenizer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]  # the bound port (port 0 picks a free one)
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}/"


def run_view(path: str | Path, host: str = "127.0.0.1", port: int = 0, compare: str | Path | None = None,
             tokenizer: str | Path | None = None) -> int:
    """``tirl view``: serve until Ctrl-C; returns the exit code (2 for a directory it cannot show)."""
    try:
        roots = resolve_roots(path, compare)
    except ViewError as err:
        print(f"tirl view: {err}", file=sys.stderr)
        return 2

    async def main() -> None:
        runner, url = await start_view(roots["a"], host, port, roots.get("b"), tokenizer)
        n = sum(len(list_sources(r)) for r in roots.values())
        print(f"tirl view: {roots['a']}" + (f" vs {roots['b']}" if "b" in roots else "")
              + f" ({n} record files) at {url}  (Ctrl-C stops)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print("tirl view: serving beyond loopback without authentication: anyone who can reach "
                  f"{host}:{url.rsplit(':', 1)[1].strip('/')} can read these runs", file=sys.stderr)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as err:
        print(f"tirl view: cannot listen on {host}:{port} ({err}); choose another --port", file=sys.stderr)
        return 1
    return 0
