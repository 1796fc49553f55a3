"""Start and stop the simulated Spine as a separate process (demo, end-to-end tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from batch.tls import client_context

READY_PREFIX = "cpis-batch sim listening on "


@dataclass
class SimProcess:
    url: str
    process: subprocess.Popen[str]
    client_cert: Path
    client_key: Path
    ca: Path

    def stats(self) -> dict[str, Any]:
        """The simulator's counters, read over the same mutual TLS as everything else."""
        ctx = client_context(self.client_cert, self.client_key, self.ca)
        with httpx.Client(verify=ctx, timeout=10) as client:
            response = client.get(f"{self.url}/_sim/stats")
            response.raise_for_status()
            return dict(response.json())


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
) -> Iterator[SimProcess]:
    """Run `cpis-batch sim` until the block ends; waits for its ready line rather than sleeping."""
    cmd = [
        sys.executable,
        "-m",
        "batch",
        "sim",
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
        *extra_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    ready: list[str] = []
    seen = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX) and not ready:
                ready.append(line.removeprefix(READY_PREFIX).strip())
                seen.set()
        seen.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        if not seen.wait(ready_timeout_s) or not ready:
            raise RuntimeError(f"simulated Spine did not start (exit code {proc.poll()})")
        yield SimProcess(
            ready[0], proc, pki_dir / "cpis-batch.pem", pki_dir / "cpis-batch.key", pki_dir / "ca.pem"
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
