"""Start and stop the simulated Spine as a separate process (demo, end-to-end tests, benchmarks).

The process always runs with ``--log-arrivals``; a reader thread collects the arrivals from its stdout, so a
test can wait for Spine to have seen so many queries (``wait_for_arrivals``) without polling.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from spine_sim.arrivals import Arrival
from spine_sim.tls import TlsFiles, client_context

READY_PREFIX = "cpis-batch sim listening on "


class _Output:
    """What the simulator prints on stdout: the ready line, then arrivals. Filled by one reader thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.url: str | None = None
        self.ended = False
        self._arrivals: list[Arrival] = []

    def read(self, stdout: IO[str]) -> None:
        for line in stdout:
            arrival = Arrival.from_line(line) if self.url is not None else None
            with self._changed:
                if arrival is not None:
                    self._arrivals.append(arrival)
                elif self.url is None and line.startswith(READY_PREFIX):
                    self.url = line.removeprefix(READY_PREFIX).strip()
                else:
                    continue
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_until_ready(self, timeout: float) -> str | None:
        with self._changed:
            self._changed.wait_for(lambda: self.url is not None or self.ended, timeout)
            return self.url

    def arrivals(self) -> list[Arrival]:
        with self._changed:
            return list(self._arrivals)

    def wait_for_arrivals(self, n: int, timeout: float) -> list[Arrival]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._arrivals) >= n or self.ended, timeout):
                raise TimeoutError(
                    f"the simulated Spine saw {len(self._arrivals)} of {n} queries in {timeout} s"
                )
            if len(self._arrivals) < n:
                raise RuntimeError(f"the simulated Spine exited after {len(self._arrivals)} of {n} queries")
            return list(self._arrivals)


@dataclass
class SimProcess:
    url: str
    process: subprocess.Popen[str]
    client_cert: Path
    client_key: Path
    ca: Path
    _output: _Output = field(repr=False)

    def arrivals(self) -> list[Arrival]:
        """Every query POST the simulator has reported so far, in arrival order (a copy)."""
        return self._output.arrivals()

    def wait_for_arrivals(self, n: int, timeout: float) -> list[Arrival]:
        """Block until at least ``n`` arrivals have been reported, and return them all (a copy).

        Raises TimeoutError after ``timeout`` seconds, and RuntimeError if the simulator exits first.
        """
        return self._output.wait_for_arrivals(n, timeout)

    def stats(self) -> dict[str, Any]:
        """The simulator's counters, read over the same mutual TLS as everything else."""
        context = client_context(TlsFiles(self.client_cert, self.client_key, self.ca))
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=10)
        try:
            connection.request("GET", "/_sim/stats")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET /_sim/stats answered HTTP {response.status}")
        return dict(json.loads(body))


@contextmanager
def running_sim(
    *,
    pki_dir: Path,
    dataset: Path,
    reply_url: str,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
    stderr: int | None = None,
    nice: int = 0,
) -> Iterator[SimProcess]:
    """Run `python -m spine_sim` until the block ends; waits for its ready line rather than sleeping.

    `nice` > 0 runs it at that lower CPU priority (with `nice`, so every thread it starts has it too)."""
    cmd = [
        sys.executable,
        "-m",
        "spine_sim",
        "--host",
        host,
        "--port",
        str(port),
        "--pki",
        str(pki_dir),
        "--dataset",
        str(dataset),
        "--reply-url",
        reply_url,
        "--log-arrivals",
        *extra_args,
    ]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    output = _Output()
    reader = threading.Thread(target=output.read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        url = output.wait_until_ready(ready_timeout_s)
        if url is None:
            raise RuntimeError(f"simulated Spine did not start (exit code {proc.poll()})")
        yield SimProcess(
            url, proc, pki_dir / "cpis-batch.pem", pki_dir / "cpis-batch.key", pki_dir / "ca.pem", output
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
