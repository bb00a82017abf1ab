"""Clean up after workers that stopped heart-beating (died, were killed, lost the network).

What it does, for each registered worker whose ``alive`` key has expired:

* every call waiting in (or taken from) its private session stream is answered
  ``infra_error`` / ``session_lost`` — those calls need state that died with the worker,
  so running them elsewhere would silently compute on a fresh session;
* its sessions are tombstoned (``sess:{sid} = lost``), so the next call of such a session
  is answered ``session_lost`` once, and the call after that starts a fresh session;
* once it owns no pending entries of the shared stream any more (live workers re-take
  those with ``XAUTOCLAIM`` after the visibility timeout), its consumer is deleted from
  the group and it leaves the registry.

What it does not do: re-run shared-stream jobs (that is the workers' ``XAUTOCLAIM`` loop)
or decide that a slow worker is dead (only the expired heartbeat says so). Any number of
gateways and workers may run it concurrently: a short lock per dead worker and
idempotent steps keep it safe.
"""

from __future__ import annotations

import json
import logging

from redis.asyncio import Redis

from tirl.sandbox.fleet import protocol as P

log = logging.getLogger("tirl.sandbox.fleet")


async def reap_dead_workers(r: Redis, keys: P.Keys, *, post_result, tombstone_ttl_s: int = 3600,
                            only: str | None = None) -> int:
    """Reap every dead worker (or just ``only``, e.g. a worker leaving cleanly). Returns
    how many workers were fully removed. ``post_result`` is the POST_RESULT script."""
    wids = [only] if only else [w.decode() for w in await r.smembers(keys.workers)]
    removed = 0
    for wid in wids:
        if only is None and await r.exists(keys.alive(wid)):
            continue
        if not await r.set(keys.reap_lock(wid), "1", nx=True, ex=30):
            continue
        try:
            if await _reap_one(r, keys, wid, post_result, tombstone_ttl_s):
                removed += 1
        finally:
            await r.delete(keys.reap_lock(wid))
    return removed


async def _reap_one(r: Redis, keys: P.Keys, wid: str, post_result, tombstone_ttl_s: int) -> bool:
    stream = keys.wjobs(wid)
    answered = 0
    while True:
        entries = await r.xrange(stream, "-", "+", count=500)
        if not entries:
            break
        for eid, fields in entries:
            try:
                job = P.decode_job(fields[b"j"])
            except (KeyError, ValueError):
                await r.xdel(stream, eid)
                continue
            if job.kind == P.CLOSE:
                res = {"closed": False, "reason": P.SESSION_LOST}
            else:
                res = P.infra_result(P.SESSION_LOST, job.session_id,
                                     f"sandbox fleet: worker {wid} holding session "
                                     f"{job.session_id!r} died; its state is lost")
            await post_result(keys=[keys.done(job.rid), job.reply, stream],
                              args=[P.GROUP, eid, job.rid, json.dumps(res), 600, 100000, 600])
            answered += 1
    await r.delete(stream)
    tomb = 0
    for sid in await r.smembers(keys.wsess(wid)):
        sid_s = sid.decode()
        tomb += int(await r.eval(P.TOMBSTONE_SESSION, 1, keys.sess(sid_s), wid, tombstone_ttl_s))
    await r.delete(keys.wsess(wid))
    if answered or tomb:
        log.warning("fleet: worker %s is gone: %d session calls answered session_lost, "
                    "%d sessions lost", wid, answered, tomb)
    # Its shared-stream entries must be re-taken by live workers before the consumer
    # (and with it, its pending-entries list) may be deleted.
    try:
        consumers = await r.xinfo_consumers(keys.jobs, P.GROUP)
    except Exception:  # no stream / no group: nothing pending anywhere
        consumers = []
    pending = next((c["pending"] for c in consumers if _s(c["name"]) == wid), 0)
    if pending:
        return False
    if consumers:
        try:
            await r.xgroup_delconsumer(keys.jobs, P.GROUP, wid)
        except Exception:
            pass
    await r.srem(keys.workers, wid)
    return True


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
