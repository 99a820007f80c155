"""Reach across network namespaces from one process: run code in a namespace, relay TCP.

The agent under test runs inside a site's namespace, but the API server it talks to
listens in another (the lab guest's own, where QEMU forwards the host's apiserver).
`forward_into` opens a loopback port inside the namespace and relays every connection
to a target reachable from this process's namespace. Only helper threads ever switch
namespace (setns on the calling thread), never the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

from .netns import Netns

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_ns(ns: Netns, fn: Callable[[], T]) -> T:
    """Run `fn()` in a helper thread switched into `ns`; its result or its exception."""
    out: list[object] = []

    def run() -> None:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            _setns(there)
            try:
                out.append(fn())
            finally:
                _setns(here)
        except BaseException as e:  # handed to the caller below
            out.append(e)
        finally:
            os.close(here)
            os.close(there)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return cast(T, out[0])


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def forward_into(ns: Netns, port: int, target: tuple[str, int]) -> Iterator[None]:
    """127.0.0.1:`port` inside `ns` relays to `target` as seen from this namespace."""

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s

    server = in_ns(ns, listen)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                up = socket.create_connection(target, timeout=10)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            conn.settimeout(None)
            threading.Thread(target=_pump, args=(conn, up), daemon=True).start()
            threading.Thread(target=_pump, args=(up, conn), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        server.close()


def http_get_in(ns: Netns, port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:`port``path` inside `ns`: (status, body), or (0, error)."""

    def get() -> tuple[int, str]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            return resp.status, body
        except OSError as e:
            return 0, str(e)

    return in_ns(ns, get)
