"""Run a Python entry point in this process and, at exit, write its own CPU time and peak RSS to a JSON file.

`BENCH_PROBE_OUT=/path/out.json python bench/probe.py batch run job.toml` runs `cpis-batch run job.toml`.
Reading the figures inside the process, at exit, is exact: VmHWM is the process's own high-water mark (a
parent's `ru_maxrss` for a child carries the parent's mark across fork), and CPU is this process's rusage,
every thread included and no child process.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import time


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _report(path: str, started: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": _vm_hwm_kib() / 1024,
        "wall_s": time.perf_counter() - started,
    }
    with open(path, "w") as out:
        json.dump(figures, out)


def _watch_threads(path: str) -> None:
    """Sample each thread's CPU every 0.2 s (a thread's time is lost from /proc when it ends)."""
    import threading

    seen: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")

    def sample() -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / tick
            name = names.get(int(tid), seen.get(int(tid), ("?", 0))[0])
            seen[int(tid)] = (name, cpu)

    def loop() -> None:
        while True:
            sample()
            time.sleep(0.2)

    def dump() -> None:
        sample()
        with open(path, "w") as out:
            json.dump({str(k): v for k, v in seen.items()}, out)

    threading.Thread(target=loop, daemon=True, name="probe").start()
    atexit.register(dump)


def main() -> int:
    target, args = sys.argv[1], sys.argv[2:]
    if os.environ.get("BENCH_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start(1)
    atexit.register(_report, os.environ["BENCH_PROBE_OUT"], time.perf_counter())
    if os.environ.get("BENCH_THREADS"):
        _watch_threads(os.environ["BENCH_THREADS"])
    if target == "batch":
        from batch.cli import main as cli_main

        return cli_main(args)
    if target == "read-validate":
        from pathlib import Path

        from batch.patients import InputSpec, read_patient_lists

        frame = read_patient_lists([Path(args[0])], InputSpec(nhs_number_column="NHS No"))
        print(frame.height)
        return 0
    raise SystemExit(f"unknown probe target {target!r}")


if __name__ == "__main__":
    sys.exit(main())
