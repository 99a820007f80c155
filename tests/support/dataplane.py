"""Data-plane netns helpers: run routevpn's data plane inside a throwaway network namespace.

`in_netns(ns, fn, *args)` forks, moves the child into `ns` (and refuses to go on if
the move did not happen: the host's own namespace must never be touched), runs the
async `fn(*args)` there and hands its result back. The netlink adapter has no
namespace argument by design (its sysctls go through /proc/sys of the caller's
namespace), so this is how tests point it at a namespace they made.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support.netns import Netns, have_root, netns
from support.tiers import missing

T = TypeVar("T")


class NetnsCallError(Exception):
    """An exception raised inside the namespace, carried back by type name and text."""

    def __init__(self, type_name: str, message: str, attrs: dict[str, Any]) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.attrs = attrs


def _netns_inode(pid: str = "thread-self") -> int:
    return Path(f"/proc/{pid}/ns/net").stat().st_ino


def _child(ns_name: str, host_inode: int, conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    try:
        from pyroute2.netns import setns  # type: ignore[import-untyped]

        setns(ns_name)
        if _netns_inode() == host_inode:
            raise RuntimeError("setns did not move the process: refusing to run on the host")
        conn.send(("ok", asyncio.run(fn(*args))))
    except BaseException as e:
        attrs = {k: v for k, v in vars(e).items() if isinstance(v, (str, int, float))}
        conn.send(("err", (type(e).__name__, str(e), attrs, traceback.format_exc())))
    finally:
        conn.close()


def in_netns(ns: Netns, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 60.0) -> T:
    """Run `await fn(*args)` in a forked child inside `ns` and return its result."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(ns.name, _netns_inode("self"), child, fn, args))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"in_netns({ns.name}, {fn.__name__}) took over {timeout}s")
        status, payload = parent.recv()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status == "err":
        type_name, message, attrs, tb = payload
        raise NetnsCallError(type_name, message, attrs) from RuntimeError(tb)
    result: T = payload
    return result


@pytest.fixture
def node_ns() -> Iterator[Netns]:
    """A fresh namespace standing for a node (root needed)."""
    if not have_root():
        missing("root (network namespaces)")
    if shutil.which("ip") is None:
        missing("iproute2 `ip`")
    with netns("rvdp") as ns:
        yield ns


def ns_sysctl(ns: Netns, path: str) -> str:
    """Read /proc/sys/<path> inside `ns` (through a separate process, as a check)."""
    return ns.run("cat", f"/proc/sys/{path}").strip()


def host_inode() -> int:
    """The host's network namespace inode (to prove tests never ran there)."""
    return _netns_inode(str(os.getpid()))
