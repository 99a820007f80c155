"""A real Prometheus (built by hack/tools.sh from its pinned Go module), run in a network
namespace so it can scrape an agent that listens there, and asked through its HTTP API.

`Prometheus(ns, workdir, config)` writes the config, starts the server inside `ns` on a
loopback port and stops it by PID. `.query(expr)` returns the API's whole answer (status,
data, warnings, infos), so a test can see errors and warnings as well as series.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from support.chart import tool
from support.cluster import free_port
from support.kube import wait_until
from support.netns import Netns
from support.nsrelay import http_get_in


class Prometheus:
    """One `prometheus` process inside `ns`, with its TSDB and log under `workdir`."""

    def __init__(self, ns: Netns, workdir: Path, config: dict[str, Any]) -> None:
        self.ns = ns
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        argv = [
            str(tool("prometheus")),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(ns.argv(*argv), stdout=self._out, stderr=subprocess.STDOUT)
        try:
            wait_until(self.ready, timeout=60, interval=0.5, what="prometheus /-/ready")
        except TimeoutError:
            self.stop()
            raise

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.tail()}")
        return http_get_in(self.ns, self.port, "/-/ready")[0] == 200

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; the decoded JSON answer (errors included, as answered)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        code, body = http_get_in(self.ns, self.port, path + query)
        if code == 0:
            raise RuntimeError(f"prometheus did not answer {path}: {body}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query now: {"status", "data": {"result": [...]}, "warnings"?, ...}."""
        return self.get("/api/v1/query", query=expr)

    def series(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query that must succeed: [{"metric", "value"}]."""
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s (by PID)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
