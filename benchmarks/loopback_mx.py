"""Direct MX delivery on loopback: a DNS server and one sink per MX host.

Domains ``d{n}.test`` are hosted round robin by ``mx_hosts`` MX hosts
``mx{k}.hosts.test`` at 127.0.0.{k+1}; every sink listens on the same port,
which is bulkmail's ``--mx-port``.  Each server runs in its own process so it
does not share the client's interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _common_free_port(hosts: int) -> int:
    """A port free on 127.0.0.1 .. 127.0.0.{hosts}."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for k in range(2, hosts + 1):
                with socket.socket() as s:
                    s.bind((f"127.0.0.{k}", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback address")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoopbackMX:
    """The DNS server and the sinks; ``stop()`` ends them all."""

    def __init__(self, domains: int, mx_hosts: int, *, domain_format: str = "d{}.test",
                 sink_args: tuple[str, ...] = ()) -> None:
        self.mx_hosts = mx_hosts
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stats_files: list[Path] = []
        try:
            self.dns = subprocess.Popen(
                [sys.executable, "-m", "bulkmail.testing.dns_server", "--domains", str(domains),
                 "--mx-hosts", str(mx_hosts), "--domain-format", domain_format],
                stdout=subprocess.PIPE,
            )
            self.procs.append(self.dns)
            assert self.dns.stdout is not None
            self.dns_port = int(self.dns.stdout.readline())
            self.mx_port = _common_free_port(mx_hosts)
            for k in range(mx_hosts):
                stats = Path(tempfile.mkstemp(suffix=".json")[1])
                self.stats_files.append(stats)
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bulkmail", "sink", "--host", f"127.0.0.{k + 1}",
                     "--port", str(self.mx_port), "--stats-file", str(stats), *sink_args],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
            for k in range(mx_hosts):
                self._wait_for(f"127.0.0.{k + 1}")
            self._started_cpu = self._cpu_now()  # start-up is not the run's load
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, host: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, self.mx_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sink on {host}:{self.mx_port} did not start")

    def send_options(self) -> list[str]:
        """``bulkmail send`` options that route through this DNS server to the sinks."""
        return ["--dns-server", f"127.0.0.1:{self.dns_port}", "--mx-port", str(self.mx_port)]

    def counters(self) -> dict[str, int]:
        """The sinks' counters summed (after their next stats rewrite)."""
        time.sleep(1.2)  # the stats files are rewritten every second
        total: dict[str, int] = {}
        for path in self.stats_files:
            for key, value in json.loads(path.read_text() or "{}").items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU of the DNS server and of all sinks since they were
        ready (Linux /proc): the share of the machine the world itself takes."""
        now = self._cpu_now()
        return {key: now[key] - self._started_cpu[key] for key in now}

    def _cpu_now(self) -> dict[str, float]:
        return {"dns": process_cpu_seconds(self.dns.pid),
                "sinks": sum(process_cpu_seconds(p.pid) for p in self.procs if p is not self.dns)}

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in self.stats_files:
            path.unlink(missing_ok=True)
