"""Throughput and memory figures: NHS-number validation, list reading, and a whole run against the simulator.

Run with `make bench` (or `.venv/bin/python bench/throughput.py --children 5000 --rate 100`). Prints one JSON
object; nothing here asserts a speed, it measures one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batch.nhs_number import nhs_number_expr  # noqa: E402
from batch.patients import InputSpec, read_patient_lists  # noqa: E402
from batch.pki import make_dev_pki  # noqa: E402
from spine_sim.dataset import generate_dataset  # noqa: E402
from spine_sim.process import running_sim  # noqa: E402
from tests.support import free_port, job_tables, write_job  # noqa: E402


def _numbers(n: int) -> list[str]:
    dataset = generate_dataset(min(n, 20000), seed=5)
    base = list(dataset.nhs_numbers())
    return [base[i % len(base)] for i in range(n)]


def bench_validation(rows: int) -> dict[str, float]:
    frame = pl.DataFrame({"nhs": _numbers(rows)})
    start = time.perf_counter()
    frame.select(nhs_number_expr("nhs").alias("checked"))
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def bench_reading(rows: int, folder: Path) -> dict[str, float]:
    path = folder / "big.csv"
    pl.DataFrame({"NHS No": _numbers(rows), "Clinic": ["ENT"] * rows}).write_csv(path)
    tracemalloc.start()
    start = time.perf_counter()
    read_patient_lists([path], InputSpec(nhs_number_column="NHS No"))
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rows": rows,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 3),
        "python_peak_mib": round(peak / 2**20, 1),
    }


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def bench_run(children: int, rate: float, latency_ms: float, folder: Path) -> dict[str, object]:
    pki = make_dev_pki(folder / "pki").directory
    dataset = generate_dataset(children, seed=9)
    dataset.dump(folder / "dataset.json")
    numbers = list(dataset.nhs_numbers())
    pl.DataFrame({"NHS No": numbers, "Appointment Date": ["20/01/2027"] * len(numbers)}).write_csv(
        folder / "list.csv"
    )
    port = free_port()
    with running_sim(
        pki_dir=pki,
        dataset=folder / "dataset.json",
        reply_url=f"https://127.0.0.1:{port}/cpis/replies",
        extra_args=["--latency-ms", str(latency_ms)],
    ) as sim:
        tables = job_tables(
            tmp=folder,
            pki=pki,
            inputs="list.csv",
            spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
            inbound_port=port,
        )
        tables["limits"].update(rate_per_second=rate, max_in_flight=200, max_concurrent_posts=10)
        job = write_job(folder / "job.toml", tables)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "batch", "--log-level", "WARNING", "run", str(job)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # ru_maxrss of a child carries the parent's high-water mark across fork, so read the run's own
        # VmHWM from /proc while it lives; wait4 still gives its CPU time.
        peak_kib = 0
        while True:
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stats = sim.stats()
    summary = json.loads((folder / "out" / "latest" / "summary.json").read_text())
    return {
        "children": len(numbers),
        "exit_code": proc.returncode,
        "configured_rate_per_s": rate,
        "achieved_rate_per_s": summary["achieved_rate_per_s"],
        "max_queries_in_any_1s_window_at_spine": stats["max_queries_in_1s_window"],
        "wall_s": round(wall, 2),
        "run_duration_s": summary["duration_s"],
        "run_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "run_peak_rss_mib": round(peak_kib / 1024, 1),
        "notifications": stats["notifications"],
        "outcomes": summary["outcomes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--validation-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cpis-bench-") as tmp:
        folder = Path(tmp)
        figures = {
            "validation": bench_validation(args.validation_rows),
            "reading": bench_reading(args.validation_rows, folder),
            "run": bench_run(args.children, args.rate, args.latency_ms, folder),
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
