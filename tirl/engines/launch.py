"""Start `tirl serve` processes on loopback: the rollout servers of a one-machine run, the
peers of the disaggregated tests, the benchmark's servers.

:func:`launch_servers` starts ``n`` processes of ``python -m tirl.cli serve`` on free ports,
each logging to its own file, and waits until every one accepts connections (a process that
exits first is reported with the end of its log). :class:`LocalServers` holds them; its
:meth:`~LocalServers.stop` terminates (then kills) every one, and it is a context manager.

What it does not do: choose a model or configure the servers beyond the command line of
`tirl serve`, or restart a server that dies (the dispatcher drains a dead server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port free on loopback now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServers:
    """Running `tirl serve` processes: ``urls[i]`` (``http://127.0.0.1:PORT/v1``) is served by
    ``procs[i]``, which logs to ``logs[i]``."""

    procs: list[subprocess.Popen]
    urls: list[str]
    logs: list[Path] = field(default_factory=list)

    def stop(self, timeout_s: float = 20.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> "LocalServers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_servers(model_dir: str | Path, n: int, log_dir: str | Path, *, served_name: str = "tiny",
                   max_batch: int = 8, max_seq_len: int = 512, threads: int = 1,
                   start_timeout_s: float = 300.0, cpus: set[int] | None = None) -> LocalServers:
    """Start ``n`` `tirl serve` processes of ``model_dir`` and wait until all accept
    connections; raise ``RuntimeError`` (with the end of its log) if one exits or the wait
    exceeds ``start_timeout_s`` — the started ones are stopped first. ``cpus``: run the
    servers on these CPU cores only (Linux; e.g. to keep them off the trainer's cores)."""
    if n < 1:
        raise ValueError(f"launch_servers(n={n}): start at least one server")
    if cpus is not None:
        usable = os.sched_getaffinity(0)
        if not cpus or not set(cpus) <= usable:
            raise ValueError(f"launch_servers(cpus={sorted(cpus)}): give cores of {sorted(usable)}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = LocalServers([], [], [])
    try:
        for i in range(n):
            port = free_port()
            log = log_dir / f"serve{i}.log"
            with open(log, "w") as out:  # the child keeps its own descriptor
                servers.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tirl.cli", "serve", "--model", str(model_dir), "--port", str(port),
                     "--served-model-name", served_name, "--max-batch", str(max_batch),
                     "--max-seq-len", str(max_seq_len), "--threads", str(threads)],
                    stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))))
            servers.urls.append(f"http://127.0.0.1:{port}/v1")
            servers.logs.append(log)
        deadline = time.monotonic() + start_timeout_s
        for p, url, log in zip(servers.procs, servers.urls, servers.logs):
            port = int(url.split(":")[2].split("/")[0])
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"tirl serve on port {port} exited with {p.returncode}:\n"
                                       + log.read_text()[-2000:])
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"tirl serve on port {port} did not start in {start_timeout_s:.0f} s; "
                                           f"see {log}") from None
                    time.sleep(0.3)
    except BaseException:
        servers.stop()
        raise
    return servers
