"""The fleet's wire protocol over Redis: key names, job/result encoding, Lua scripts.

Why Redis **Streams with a consumer group**, not lists:

* A list pop (``BLMOVE``/``RPOPLPUSH`` into a per-worker "processing" list) gives
  at-least-once delivery only with a hand-written reaper that scans every worker's list
  and guesses how long an item has been there. A stream's consumer group keeps that
  bookkeeping inside Redis: every delivered entry sits in the group's pending-entries
  list (PEL) with its owner, its idle time and its delivery count, ``XAUTOCLAIM`` moves
  entries idle longer than the visibility timeout to a live worker in one command, and
  ``XCLAIM … JUSTID`` lets a busy worker extend its lease without bumping the count.
* The delivery count is what turns "a job that keeps killing workers" into a typed
  ``worker_lost`` answer instead of an endless redelivery loop.
* ``XREADGROUP`` over several streams at once lets a worker wait on the shared queue and
  on its own session queue (affinity) with a single blocking call.

Keys (``P`` is the prefix, default ``tirl:fleet``; one Redis, no cluster: the Lua
scripts touch keys of several kinds):

==========================  =====================================================
``P:jobs``                  shared job stream, consumer group ``workers``
``P:wjobs:{wid}``           one worker's private stream (calls of its sessions)
``P:alive:{wid}``           heartbeat, expires after ``worker_ttl_s``
``P:workers``               set of registered worker ids (for the reaper)
``P:sess:{sid}``            session owner: a worker id, or ``lost`` (tombstone)
``P:wsess:{wid}``           set of session ids a worker owns
``P:done:{rid}``            "a result for this request was posted" (dedup marker)
``P:res:{gid}``             one gateway's result stream (read by one listener)
``P:epoch``                 random token; a new one means Redis lost its data
==========================  =====================================================

A job is one stream entry with the field ``j`` (JSON, see :func:`encode_job`); a result
is an entry of the gateway's result stream with fields ``rid`` and ``r`` (JSON). The job
stream entry's id (Redis server milliseconds) is the enqueue time, so workers measure
queue age on Redis's clock and machines with skewed clocks still agree.

This module does not talk to Redis itself except through the scripts it defines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

GROUP = "workers"
LOST = "lost"

# Job kinds.
EXEC = "exec"
GRADE = "grade"
CLOSE = "close"

# infra_error reasons produced by the fleet.
QUEUE_TIMEOUT = "queue_timeout"  # no worker picked the request up in time
WORKER_LOST = "worker_lost"  # the worker running it died and it could not be re-run
SESSION_LOST = "session_lost"  # the worker holding the session died; its state is gone
REDIS_UNAVAILABLE = "redis_unavailable"  # the gateway could not reach Redis in time


@dataclass(frozen=True)
class Keys:
    prefix: str = "tirl:fleet"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    def wjobs(self, wid: str) -> str:
        return f"{self.prefix}:wjobs:{wid}"

    def alive(self, wid: str) -> str:
        return f"{self.prefix}:alive:{wid}"

    def sess(self, sid: str) -> str:
        return f"{self.prefix}:sess:{sid}"

    def wsess(self, wid: str) -> str:
        return f"{self.prefix}:wsess:{wid}"

    def done(self, rid: str) -> str:
        return f"{self.prefix}:done:{rid}"

    def res(self, gid: str) -> str:
        return f"{self.prefix}:res:{gid}"

    def run_marker(self, rid: str) -> str:
        return f"{self.prefix}:run:{rid}"

    def reap_lock(self, wid: str) -> str:
        return f"{self.prefix}:reaplock:{wid}"


@dataclass
class Job:
    """One unit of work as it travels through Redis."""

    rid: str
    kind: str
    reply: str  # the result stream of the gateway that waits for it
    queue_timeout_ms: int
    code: str = ""
    stdin: str = ""
    timeout_s: float | None = None
    session_id: str | None = None
    response: str = ""  # grade jobs
    gold: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def encode_job(job: Job) -> bytes:
    d: dict[str, Any] = {"rid": job.rid, "k": job.kind, "reply": job.reply, "qt": job.queue_timeout_ms}
    if job.kind == EXEC:
        d["code"] = job.code
        if job.stdin:
            d["stdin"] = job.stdin
        if job.timeout_s is not None:
            d["t"] = job.timeout_s
    elif job.kind == GRADE:
        d["resp"] = job.response
        d["gold"] = job.gold
        if job.timeout_s is not None:
            d["t"] = job.timeout_s
    if job.session_id is not None:
        d["sid"] = job.session_id
    if job.extra:
        d["x"] = job.extra
    return json.dumps(d, separators=(",", ":")).encode()


def decode_job(raw: bytes | str) -> Job:
    d = json.loads(raw)
    return Job(
        rid=d["rid"], kind=d["k"], reply=d["reply"], queue_timeout_ms=int(d.get("qt", 0)),
        code=d.get("code", ""), stdin=d.get("stdin", ""), timeout_s=d.get("t"),
        session_id=d.get("sid"), response=d.get("resp", ""), gold=d.get("gold", ""),
        extra=d.get("x") or {},
    )


def entry_ms(entry_id: bytes | str) -> int:
    """Redis server time (ms) at which a stream entry was added."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-", 1)[0])


# Post one result exactly once and retire the job entry, atomically.
# KEYS: done marker, reply stream, job stream. ARGV: group, entry id, rid, result json,
# done ttl (s), reply stream maxlen, reply stream ttl (s).
POST_RESULT = """
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[5])
if fresh then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'rid', ARGV[3], 'r', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
end
if fresh then return 1 end
return 0
"""

# Route a session call: to its owner's private stream when the owner is alive, to the
# shared stream when the session is new, or report it lost.
# KEYS: sess key. ARGV: prefix, job json, session tombstone handling ('route'|'close').
# Returns {where, entry id or ''}; where is 'shared', 'lost', 'none' or the owner's id.
ROUTE_SESSION = """
local owner = redis.call('GET', KEYS[1])
local prefix = ARGV[1]
if owner == 'lost' then
  redis.call('DEL', KEYS[1])
  return {'lost', ''}
end
if owner then
  if redis.call('EXISTS', prefix .. ':alive:' .. owner) == 1 then
    local id = redis.call('XADD', prefix .. ':wjobs:' .. owner, '*', 'j', ARGV[2])
    return {owner, id}
  end
  redis.call('DEL', KEYS[1])
  return {'lost', ''}
end
if ARGV[3] == 'close' then
  return {'none', ''}
end
local id = redis.call('XADD', prefix .. ':jobs', '*', 'j', ARGV[2])
return {'shared', id}
"""

# A worker takes a session call: KEYS sess, wsess(self), run marker of the request.
# ARGV: self id, prefix, ttl s, sid, '1' if this is a first delivery.
# Returns 'mine' (now or already), 'dup' (a copy of this request already ran: a retried
# send must not run a cell twice in a session), or the live owner's id (caller forwards).
CLAIM_SESSION = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and owner ~= 'lost' then
  if redis.call('EXISTS', ARGV[2] .. ':alive:' .. owner) == 1 then
    return owner
  end
end
if ARGV[5] == '1' and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 600) then
  return 'dup'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 'mine'
"""

# Tombstone a dead worker's session if it still points at that worker.
# KEYS: sess. ARGV: dead worker id, tombstone ttl.
TOMBSTONE_SESSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'lost', 'EX', ARGV[2])
  return 1
end
return 0
"""

# Forget a session a worker closed: KEYS sess, wsess. ARGV: worker id, sid.
RELEASE_SESSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


# Withdraw a job no worker has taken yet. KEYS: stream. ARGV: group, entry id.
# Returns 1 when withdrawn (it will never run), 0 when a worker holds it or it is gone.
WITHDRAW_IF_WAITING = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p > 0 then return 0 end
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


def infra_result(reason: str, session_id: str | None = None, detail: str = "") -> dict[str, Any]:
    """An ``ExecResult`` dict for a request the fleet could not run."""
    return {
        "status": "infra_error",
        "stdout": "",
        "stderr": detail or f"sandbox fleet: {reason}",
        "exit_code": None,
        "exec_ms": 0.0,
        "queue_ms": 0.0,
        "truncated": False,
        "session_id": session_id,
        "session_reset": session_id is not None and reason in (SESSION_LOST, WORKER_LOST),
        "reason": reason,
        "extra": {},
    }
