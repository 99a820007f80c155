"""Break a control plane's processes on purpose: freeze, kill and restart them by PID.

The API-fault lab tests (tests/lab/test_faults_api_lab.py) need a control plane they may
break. Starting one inside the lab guest costs minutes of emulated CPU, so the lab's
host side starts one of its own for them (as a real cluster's API server is off the
node) and serves its faults over HTTP on a port forwarded into the guest:

``FaultServer(cp)``  on the host: ``GET /healthy``, ``GET /logs``,
    ``POST /signal/<component>/<STOP|CONT>``, ``POST /kill/<component>``,
    ``POST /restart/<component>`` (the killed command line again)
``RemoteFaults(url)``  in the guest: the same, as methods
``LocalFaults(cp)``  the same on a control plane of this process's own machine

Only ``etcd`` and ``kube-apiserver`` can be touched, and only by the PID the control
plane's script recorded: nothing else on the host.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from .cluster import ControlPlane

COMPONENTS = ("etcd", "kube-apiserver")
# What tests/lab/conftest.py sets in the guest when it serves a control plane to break
KUBECONFIG_ENV = "ROUTEVPN_LAB_FAULTS_KUBECONFIG"
URL_ENV = "ROUTEVPN_LAB_FAULTS_URL"
SIGNALS = {"STOP": signal.SIGSTOP, "CONT": signal.SIGCONT}


class Faults(Protocol):
    """What a test may do to the control plane under the agent."""

    def healthy(self) -> bool: ...
    def signal(self, name: str, which: str) -> None: ...
    def kill(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def logs(self) -> str: ...


def _alive(pid: int) -> bool:
    """Running (a zombie has no command line; a reaped process no /proc entry)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except FileNotFoundError:
        return False


class LocalFaults:
    """Faults of a control plane on this machine, by the PIDs its script recorded."""

    def __init__(self, cp: ControlPlane) -> None:
        assert cp.state_dir is not None
        self.cp, self.state = cp, cp.state_dir
        self.killed: dict[str, list[str]] = {}

    def _pidfile(self, name: str) -> Path:
        if name not in COMPONENTS:
            raise ValueError(f"not a component: {name!r}")
        return self.state / "run" / f"{name}.pid"

    def _pid(self, name: str) -> int:
        return int(self._pidfile(name).read_text().strip())

    def healthy(self) -> bool:
        return self.cp.healthy()

    def signal(self, name: str, which: str) -> None:
        os.kill(self._pid(name), SIGNALS[which])

    def kill(self, name: str) -> None:
        """SIGKILL it, keeping its command line for `restart`."""
        pid = self._pid(name)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} (PID {pid}) outlived SIGKILL by 30 s")
            time.sleep(0.1)
        self.killed[name] = [a.decode() for a in argv if a]

    def restart(self, name: str) -> None:
        """Start the killed one again as the script does (own session, its log), recording
        the PID where the script's `down` finds it."""
        argv = self.killed.pop(name)
        with (self.state / "log" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._pidfile(name).write_text(f"{proc.pid}\n")

    def logs(self, lines: int = 25) -> str:
        """The end of each component's log (the script's and the restarts')."""
        out = []
        for log in sorted((self.state / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)


class _Handler(BaseHTTPRequestHandler):
    faults: LocalFaults  # set on the subclass FaultServer makes

    def log_message(self, format: str, *args: object) -> None:
        return  # quiet: the test prints what matters

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthy":
            self._reply(200, {"healthy": self.faults.healthy()})
        elif self.path == "/logs":
            self._reply(200, {"logs": self.faults.logs()})
        else:
            self._reply(404, {"error": f"no such path: {self.path}"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        try:
            match parts:
                case ["signal", name, which] if which in SIGNALS:
                    self.faults.signal(name, which)
                case ["kill", name]:
                    self.faults.kill(name)
                case ["restart", name]:
                    self.faults.restart(name)
                case _:
                    self._reply(404, {"error": f"no such path: {self.path}"})
                    return
        except (ValueError, KeyError, OSError, TimeoutError) as e:
            self._reply(409, {"error": f"{type(e).__name__}: {e}"})
            return
        self._reply(200, {"done": self.path})


class FaultServer:
    """`LocalFaults` of `cp` served on 127.0.0.1:`port` from a thread (see the docstring)."""

    def __init__(self, cp: ControlPlane) -> None:
        handler = type("Handler", (_Handler,), {"faults": LocalFaults(cp)})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RemoteFaults:
    """A `FaultServer`'s faults, from the guest: `url` is ``http://HOST:PORT``."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout

    def _call(self, method: str, path: str) -> dict[str, object]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {body}")
        return dict(json.loads(body))

    def healthy(self) -> bool:
        return bool(self._call("GET", "/healthy")["healthy"])

    def signal(self, name: str, which: str) -> None:
        self._call("POST", f"/signal/{name}/{which}")

    def kill(self, name: str) -> None:
        self._call("POST", f"/kill/{name}")

    def restart(self, name: str) -> None:
        self._call("POST", f"/restart/{name}")

    def logs(self) -> str:
        return str(self._call("GET", "/logs")["logs"])
