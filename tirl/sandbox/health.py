"""`tirl doctor` checks of the sandbox: can this machine fork isolated children, and how isolated.

One forked probe process tries each feature the zygote uses (network namespace, private
mounts, an unprivileged uid, the seccomp filter) and reports back through a pipe; nothing
is left behind. Takes well under a second. It does not start a zygote or run user code.
"""

from __future__ import annotations

import json
import os
import select
import time

from tirl.health import Check


def _probe() -> dict:
    from tirl.sandbox import isolation

    out: dict = {"root": os.geteuid() == 0}
    try:
        isolation.unshare(isolation.CLONE_NEWNET)
        out["network"] = "ok"
    except OSError as err:
        out["network"] = str(err)
    try:
        isolation.unshare(isolation.CLONE_NEWNS)
        isolation.mount("none", "/", None, isolation.MS_REC | isolation.MS_PRIVATE, None)
        isolation.mount("tmpfs", "/tmp", "tmpfs", isolation.MS_NOSUID | isolation.MS_NODEV, "mode=0711,size=1m")
        out["mounts"] = "ok"
    except OSError as err:
        out["mounts"] = str(err)
    if out["root"]:
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            out["uid"] = "ok" if os.getuid() == 65534 else "setresuid had no effect"
        except OSError as err:
            out["uid"] = str(err)
    try:
        isolation.set_no_new_privs()
        isolation.install_seccomp()
        try:
            isolation.unshare(isolation.CLONE_NEWNET)
            out["seccomp"] = "filter installed but unshare was not blocked"
        except OSError:
            out["seccomp"] = "ok"
    except OSError as err:
        out["seccomp"] = str(err)
    return out


def probe(timeout_s: float = 5.0) -> dict:
    """Run :func:`_probe` in a forked child; {"fork": error} when forking itself fails."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as err:
        os.close(r)
        os.close(w)
        return {"fork": str(err)}
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(_probe()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    try:
        res = json.loads(data)
    except ValueError:
        return {"fork": "ok", "probe": f"probe child gave no answer ({data[:200]!r})"}
    res["fork"] = "ok"
    return res


def checks() -> list[Check]:
    t0 = time.monotonic()
    p = probe()
    ms = (time.monotonic() - t0) * 1000
    if p.get("fork") != "ok" or "probe" in p:
        return [Check("sandbox: zygote can fork", False, p.get("probe") or p.get("fork", "?"))]
    out = [Check("sandbox: zygote can fork", True, f"probe forked and answered in {ms:.0f} ms")]
    net = p.get("network")
    out.append(Check("sandbox: network isolation", net == "ok",
                     "own network namespace per zygote" if net == "ok" else
                     f"WARNING: NO NETWORK ISOLATION, user code could reach the network ({net}); "
                     "the sandbox still starts. Run as root on Linux, or in a container with "
                     "CAP_SYS_ADMIN."))
    mnt = p.get("mounts")
    out.append(Check("sandbox: private /tmp", mnt == "ok",
                     "private tmpfs over world-writable dirs" if mnt == "ok" else
                     f"unavailable ({mnt}): user code can write to /tmp"))
    if p.get("root"):
        uid = p.get("uid")
        out.append(Check("sandbox: unprivileged uid", uid == "ok",
                         "each call runs as its own uid (no root)" if uid == "ok" else f"failed: {uid}"))
    else:
        out.append(Check("sandbox: unprivileged uid", False,
                         "not root: calls run with the server's own uid (no uid isolation)"))
    sc = p.get("seccomp")
    out.append(Check("sandbox: seccomp filter", sc == "ok",
                     "deny-list filter installs and blocks" if sc == "ok" else f"unavailable: {sc}"))
    return out
