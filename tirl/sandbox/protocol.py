"""Messages between the supervisor, the zygote and session workers.

One message = one SOCK_SEQPACKET datagram: ``b"J"`` + JSON, with file descriptors attached
(SCM_RIGHTS). A message whose JSON is larger than :data:`MAX_INLINE` travels in a memfd
whose descriptor is the first one attached (``b"M"``), so code and stdin of any allowed size
fit. Not a public format: both ends are this package, same version.
"""

from __future__ import annotations

import array
import json
import os
import socket

MAX_INLINE = 32 * 1024
MAX_FDS = 8


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        for opt in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):
            if opt is None:
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                break
            except OSError:
                continue
    return a, b


def encode(obj: dict, fds: list[int] | tuple[int, ...] = ()) -> tuple[bytes, list[int], int | None]:
    """-> (datagram, fds to attach, memfd to close after sending or None)."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) <= MAX_INLINE:
        return b"J" + data, list(fds), None
    mfd = os.memfd_create("tirl-msg", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        n = os.write(mfd, view)
        view = view[n:]
    os.lseek(mfd, 0, os.SEEK_SET)
    return b"M", [mfd, *fds], mfd


def send(sock: socket.socket, obj: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Blocking send (the zygote and workers); the supervisor uses :func:`encode` itself."""
    datagram, allfds, mfd = encode(obj, fds)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", allfds))] if allfds else []
        sock.sendmsg([datagram], anc)
    finally:
        if mfd is not None:
            os.close(mfd)


def decode(msg: bytes, fds: list[int]) -> tuple[dict, list[int]]:
    if msg[:1] == b"M":
        mfd, fds = fds[0], fds[1:]
        chunks = []
        try:
            while True:
                c = os.read(mfd, 1 << 20)
                if not c:
                    break
                chunks.append(c)
        finally:
            os.close(mfd)
        return json.loads(b"".join(chunks)), fds
    return json.loads(msg[1:]), fds


def recv(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """Blocking receive of one message; None at end of stream."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_INLINE + 16, MAX_FDS)
    if not msg:
        for fd in fds:
            os.close(fd)
        return None
    return decode(msg, fds)


def send_nonblocking(sock: socket.socket, obj: dict, fds: list[int] | tuple[int, ...] = (),
                     stall_s: float = 5.0) -> None:
    """Send on a non-blocking socket (the supervisor's side). The buffers are 4 MiB, so a
    full buffer means the peer is stuck; then wait up to ``stall_s`` before giving up."""
    datagram, allfds, mfd = encode(obj, fds)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", allfds))] if allfds else []
    try:
        try:
            sock.sendmsg([datagram], anc)
        except BlockingIOError:
            sock.settimeout(stall_s)
            try:
                sock.sendmsg([datagram], anc)
            finally:
                sock.setblocking(False)
    finally:
        if mfd is not None:
            os.close(mfd)
