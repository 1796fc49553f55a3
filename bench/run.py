"""`make bench`: every figure the performance and crash issues ask for, measured in one run, beside its goal.

Runs the simulated Spine and the client as real processes over real mutual TLS. Rates are read from the
simulator's arrival log: (n - 1) / (last - first) over at least 20 s, and `max_in_1s` is the most arrivals in
any window [t, t + 1). CPU is the client's own rusage (no child processes) divided by children; RSS is the
VmHWM of the process concerned (see bench/probe.py). The CPU breakdown comes from a separate run under py-spy
(bench/profile.py). `BENCH_SIZE` (default 1) scales every run down; the smoke test in `make test` runs it at a
tiny size and checks only that every figure is there. Nothing here asserts a speed: figures are printed beside
their goals and written to bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from batch.pki import make_dev_pki  # noqa: E402
from batch.ratelimit import max_in_window  # noqa: E402
from bench.profile import breakdown  # noqa: E402
from spine_sim.arrivals import Arrival  # noqa: E402
from spine_sim.dataset import Dataset, generate_dataset  # noqa: E402
from spine_sim.jobfile import free_port, job_tables, write_job  # noqa: E402
from spine_sim.process import SimProcess, running_sim  # noqa: E402

RESULTS = REPO / "bench" / "results.json"
PY_SPY = REPO / ".venv-tools" / "profile" / "bin" / "py-spy"
RUN_SECONDS = 20.0
RATES = (5, 20, 50, 100, 200)
LOW_RATES = (5, 20, 50)
HIGH_RATE = 1000  # "as fast as the machine goes" for the memory runs; the cap protects nothing here
MEMORY_SIZES = {"run_10k": 10_000, "run_100k": 100_000}
BACKGROUND_NICE = 19


@dataclass(frozen=True)
class Probe:
    cpu_s: float
    peak_rss_mib: float
    wall_s: float


class Bench:
    def __init__(self, folder: Path, size: float) -> None:
        self.folder = folder
        self.size = size
        self.pki = make_dev_pki(folder / "pki").directory
        self._dataset: Dataset | None = None

    def seconds(self, full: float) -> float:
        return max(1.0, full * self.size)

    def count(self, full: int) -> int:
        return max(20, int(full * self.size))

    def numbers(self, children: int) -> tuple[Path, list[str]]:
        """One dataset, as large as the largest run, generated once; each run takes its first `children`
        numbers, and its simulator loads only those (loading all 100,000 took ~6 s per simulator start)."""
        if self._dataset is None:
            largest = max(
                self.count(max(MEMORY_SIZES.values())), int(max(RATES) * self.seconds(RUN_SECONDS)) + 1
            )
            self._dataset = generate_dataset(largest, seed=9)
        dataset = self._dataset
        numbers = sorted(dataset.nhs_numbers())[:children]
        keep = set(numbers)
        path = self.folder / f"dataset-{children}.json"
        if not path.exists():
            replace(
                dataset,
                children={n: c for n, c in dataset.children.items() if n in keep},
                errors={n: e for n, e in dataset.errors.items() if n in keep},
                not_found={n: f for n, f in dataset.not_found.items() if n in keep},
            ).dump(path)
        return path, numbers

    def job(self, name: str, numbers: list[str], sim: SimProcess, port: int, **limits: object) -> Path:
        folder = self.folder / name
        folder.mkdir()
        pl.DataFrame({"NHS No": numbers, "Appointment Date": ["20/01/2027"] * len(numbers)}).write_csv(
            folder / "list.csv"
        )
        tables = job_tables(
            tmp=folder,
            pki=self.pki,
            inputs="list.csv",
            spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
            inbound_port=port,
        )
        tables["limits"].update({"max_in_flight": 1000, "reply_timeout_s": 60, **limits})
        return write_job(folder / "job.toml", tables)

    def client(
        self,
        job: Path,
        *,
        kill_when: Callable[[], None] | None = None,
        profiler: Path | None = None,
        nice: int = 0,
    ) -> Probe | None:
        """Run `cpis-batch run job` under the probe; with `kill_when`, SIGKILL it once that returns. With
        `profiler`, py-spy records it (raw samples to `profiler`). `nice` > 0: at that lower CPU priority."""
        out = job.parent / f"probe-{time.monotonic_ns()}.json"
        command = [sys.executable, str(REPO / "bench" / "probe.py"), "batch", "--log-level", "WARNING", "run"]
        command.append(str(job))
        if nice:
            command = ["nice", "-n", str(nice), *command]
        if profiler is not None:
            # py-spy samples running and runnable threads: on a shared core, a thread woken by its peer waits
            # runnable at the line that woke it. One core for the client, one for the simulator keeps that
            # wait out of the samples (where taskset exists).
            spy = [str(PY_SPY), "record", "--nonblocking", "--rate", "100", "--format", "raw"]
            if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
                spy = ["taskset", "-c", "0", *spy]
            command = [*spy, "--output", str(profiler), "--", *command]
        proc = subprocess.Popen(
            command,
            env={**os.environ, "BENCH_PROBE_OUT": str(out)},
            stdout=subprocess.DEVNULL,
            stderr=(job.parent / "client.log").open("a"),
            cwd=REPO,
        )
        if kill_when is not None:
            try:
                kill_when()
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            return None
        code = proc.wait()
        if code not in (0, 1) or not (job.parent / "out" / "latest" / "summary.json").exists():
            raise RuntimeError(f"the client exited {code}: {(job.parent / 'client.log').read_text()[-2000:]}")
        figures = json.loads(out.read_text())
        return Probe(figures["cpu_s"], figures["peak_rss_mib"], figures["wall_s"])


def _sim_cpu_s(sim: SimProcess) -> float:
    fields = Path(f"/proc/{sim.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(arrivals: list[Arrival], configured: float) -> dict[str, float]:
    times = sorted(a.t for a in arrivals)
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {
        "ratio": round(achieved / configured, 4),
        "max_in_1s": max_in_window(times, 1.0),
        "achieved_per_s": round(achieved, 2),
        "seconds": round(times[-1] - times[0], 2) if times else 0.0,
    }


@contextmanager
def _spine(bench: Bench, dataset: Path, port: int, *args: str, nice: int = 0) -> Iterator[SimProcess]:
    """A fresh simulated Spine that answers to the client's endpoint on `port`."""
    with running_sim(
        pki_dir=bench.pki,
        dataset=dataset,
        reply_url=f"https://127.0.0.1:{port}/cpis/replies",
        extra_args=args,
        nice=nice,
    ) as sim:
        yield sim


def client_run(
    bench: Bench,
    name: str,
    children: int,
    rate: float,
    *,
    sim_args: tuple[str, ...] = (),
    profiler: Path | None = None,
    nice: int = 0,
    **limits: object,
) -> dict[str, Any]:
    """One whole run against a fresh simulator: rate at Spine, client CPU and RSS, simulator CPU. `nice` > 0
    runs client and simulator at that lower CPU priority."""
    dataset, numbers = bench.numbers(children)
    port = free_port()
    with _spine(bench, dataset, port, "--latency-ms", "20", *sim_args, nice=nice) as sim:
        job = bench.job(name, numbers, sim, port, rate_per_second=rate, **limits)
        if profiler is not None and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(sim.process.pid, {1})  # the client goes on core 0 (see Bench.client)
        probe = bench.client(job, profiler=profiler, nice=nice)
        assert probe is not None
        arrivals = sim.arrivals()
        sim_cpu = _sim_cpu_s(sim)
    summary = json.loads((job.parent / "out" / "latest" / "summary.json").read_text())
    figures = _rate(arrivals, rate)
    figures.update(
        children=len(numbers),
        client_cpu_ms_per_child=round(1000 * probe.cpu_s / len(numbers), 3),
        sim_cpu_ms_per_child=round(1000 * sim_cpu / len(numbers), 3),
        client_peak_rss_mib=round(probe.peak_rss_mib, 1),
        wall_s=round(probe.wall_s, 1),
        post_concurrency_peak=summary["this_process"]["post_concurrency_peak"],
    )
    return figures


def rate_run(bench: Bench, rate: float, **kwargs: Any) -> dict[str, Any]:
    children = int(rate * bench.seconds(RUN_SECONDS)) + 1
    return client_run(bench, kwargs.pop("name", f"rate-{rate:g}"), children, rate, **kwargs)


def restart_run(bench: Bench, rate: float = 50.0) -> dict[str, float]:
    """Kill a run half way (Spine has seen half the children), restart it, and time the restart."""
    children = int(rate * bench.seconds(RUN_SECONDS)) + 1
    dataset, numbers = bench.numbers(children)
    port = free_port()
    with _spine(bench, dataset, port, "--latency-ms", "500") as sim:
        # Old attempts whose replies died with the killed process are re-queried after reply_timeout_s; the
        # figures are about the fresh children sent before then, so a short timeout only shortens the tail.
        job = bench.job("restart", numbers, sim, port, rate_per_second=rate, reply_timeout_s=15)
        bench.client(job, kill_when=lambda: sim.wait_for_arrivals(children // 2, timeout=300))
        killed_after = int(sim.stats()["queries_received"])
        before = sim.wait_for_arrivals(killed_after, timeout=30)
        restarted = time.time()
        bench.client(job)
        arrivals = sim.arrivals()[len(before) :]
    seen = {a.nhs_number for a in before}
    fresh = [a for a in arrivals if a.nhs_number not in seen]
    first = fresh[0].t
    window = [a for a in arrivals if first <= a.t < first + 10.0]
    return {
        "first_fresh_query_s": round(first - restarted, 3),
        "ratio_first_10s": _rate(window, rate)["ratio"],
        "killed_after_queries": killed_after,
    }


def memory_run(bench: Bench, key: str, nice: int = 0) -> dict[str, Any]:
    """A whole run as fast as the machine goes, Spine reusing its connections: its peak RSS (and, for the
    10k run, the keep-alive CPU figure)."""
    return client_run(
        bench,
        key,
        bench.count(MEMORY_SIZES[key]),
        HIGH_RATE,
        sim_args=("--reply-connections", "reuse"),
        max_concurrent_posts=64,
        nice=nice,
    )


def read_validate(bench: Bench) -> dict[str, float]:
    """Peak RSS of reading and validating a 1M-row clinic list (a process of its own)."""
    rows = bench.count(1_000_000)
    path = bench.folder / "list-1m.csv"
    numbers = _valid_nhs_numbers(rows)
    pl.DataFrame(
        {
            "NHS No": [f"{n[:3]} {n[3:6]} {n[6:]}" if i % 3 == 0 else n for i, n in enumerate(numbers)],
            "Surname": ["SMITH"] * rows,
            "Forename": ["ALEX"] * rows,
            "Date of Birth": ["01/02/2015"] * rows,
            "Appointment Date": ["20/01/2027"] * rows,
            "Clinic": ["Paediatrics"] * rows,
        }
    ).write_csv(path)
    out = bench.folder / "probe-read.json"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "probe.py"), "read-validate", str(path)],
        env={**os.environ, "BENCH_PROBE_OUT": str(out)},
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )
    figures = json.loads(out.read_text())
    return {
        "rows": rows,
        "peak_rss_mib": round(figures["peak_rss_mib"], 1),
        "seconds": round(figures["wall_s"], 2),
    }


def _valid_nhs_numbers(count: int) -> list[str]:
    """Numbers the `simulated` profile accepts (the 999 test range, good check digits), distinct until the
    range's ~909,000 run out, then repeated: as a list with several appointments per child repeats them."""
    valid: list[str] = []
    for stem in range(999_000_000, 1_000_000_000):
        digits = [int(d) for d in str(stem)]
        check = (11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11) % 11
        if check != 10:
            valid.append(f"{stem}{check}")
            if len(valid) == count:
                break
    return [valid[i % len(valid)] for i in range(count)]


def nhs_check(bench: Bench) -> dict[str, float]:
    """Rows per second through our vectorised NHS number check, and against the `nhs-number` package per row."""
    import nhs_number

    from batch.nhs_number import nhs_number_expr

    rows = bench.count(1_000_000)
    rng = random.Random(11)
    values = [f"{rng.randrange(10**9, 10**10)}" for _ in range(rows)]
    frame = pl.DataFrame({"nhs": values})
    ours = min(_timed(lambda: frame.select(nhs_number_expr("nhs"))) for _ in range(3))
    sample = values[: min(rows, 200_000)]
    theirs = min(_timed(lambda: [nhs_number.is_valid(v) for v in sample]) for _ in range(2))
    ours_rate = rows / ours
    theirs_rate = len(sample) / theirs
    return {"rows_per_s": round(ours_rate), "ratio_vs_nhs_number_package": round(ours_rate / theirs_rate, 2)}


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def profile_run(bench: Bench) -> dict[str, float]:
    """A separate 100/s run under py-spy; its samples share out that run's CPU per child by component."""
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} is missing: `make bench` installs it (py-spy, in its own venv)")
    samples = bench.folder / "profile.txt"
    run = rate_run(bench, 100, name="profile", profiler=samples)
    return breakdown(samples, run["client_cpu_ms_per_child"])


def inbound_connections(bench: Bench) -> dict[str, float]:
    """The endpoint's CPU per new connection, alone (bench/connections.py), beside a bare TLS server's."""
    count = max(20, int(1000 * bench.size))
    command = [sys.executable, str(REPO / "bench" / "connections.py"), str(bench.pki), str(count)]
    figures: dict[str, float] = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    return figures


@dataclass(frozen=True)
class Goal:
    figure: str
    goal: str
    met: Callable[[dict[str, Any]], bool]


def _rate_goal(rate: str, ratio: float, key: str = "rates") -> Goal:
    return Goal(
        f"{key}.{rate}",
        f"ratio >= {ratio}, max_in_1s <= {rate}",
        lambda r: r[key][rate]["ratio"] >= ratio and r[key][rate]["max_in_1s"] <= int(rate),
    )


GOALS = (
    Goal("client_cpu_ms_per_child", "<= 2.5", lambda r: r["client_cpu_ms_per_child"] <= 2.5),
    Goal(
        "client_cpu_ms_per_child_keepalive", "<= 1.5", lambda r: r["client_cpu_ms_per_child_keepalive"] <= 1.5
    ),
    *(_rate_goal(str(rate), 0.98) for rate in LOW_RATES),
    _rate_goal("100", 0.97),
    _rate_goal("200", 0.95),
    _rate_goal("50", 0.98, "rates_ack_200ms"),
    Goal(
        "restart.ratio_first_10s",
        "full rate at once (>= 0.95)",
        lambda r: r["restart"]["ratio_first_10s"] >= 0.95,
    ),
    Goal("memory_mib.read_validate_1m", "<= 300", lambda r: r["memory_mib"]["read_validate_1m"] <= 300),
    Goal(
        "memory_mib.run_100k",
        "<= 1.25 x run_10k",
        lambda r: r["memory_mib"]["run_100k"] <= 1.25 * r["memory_mib"]["run_10k"],
    ),
)


def _lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        value = value[part]
    return value


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'figure':40} {'value':>34}  {'goal':34} met")
    for goal in GOALS:
        value = _lookup(results, goal.figure)
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items() if k in ("ratio", "max_in_1s"))
        print(f"{goal.figure:40} {value!s:>34}  {goal.goal:34} {'yes' if goal.met(results) else 'NO'}")
    print(f"{'sim_cpu_ms_per_child':40} {results['sim_cpu_ms_per_child']!s:>34}  {'never the limit':34}")
    print(f"{'restart.first_fresh_query_s':40} {results['restart']['first_fresh_query_s']!s:>34}")
    print(f"{'memory_mib.run_10k':40} {results['memory_mib']['run_10k']!s:>34}")
    print(f"{'nhs_check.rows_per_s':40} {results['nhs_check']['rows_per_s']!s:>34}")
    print(
        f"{'nhs_check.ratio_vs_nhs_number_package':40} {results['nhs_check']['ratio_vs_nhs_number_package']!s:>34}"
    )
    connection = results["detail"]["inbound_connection_ms"]
    print(
        f"{'one inbound connection, CPU ms':40} {connection['endpoint_cpu_ms']!s:>34}"
        f"  (Nagle peer {connection['endpoint_nagle_peer_cpu_ms']}, bare TLS server {connection['floor_cpu_ms']})"
    )
    print("cpu_breakdown_ms_per_child:")
    for component, ms in results["cpu_breakdown_ms_per_child"].items():
        print(f"  {component:38} {ms:>34}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the figures go (JSON)")
    args = parser.parse_args()
    size = float(os.environ.get("BENCH_SIZE", "1"))
    started = time.perf_counter()
    # The machine's load beside the figures: a busy neighbour shows in every rate and CPU figure.
    results: dict[str, Any] = {"bench_size": size, "load_average_1m_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="cpis-bench-") as tmp:
        bench = Bench(Path(tmp), size)
        results["nhs_check"] = nhs_check(bench)
        read = read_validate(bench)
        bench.numbers(1)  # the dataset, made once before anything is timed
        # The 10k run alone: its CPU per child is a figure.
        memory_detail = {"run_10k": memory_run(bench, "run_10k")}
        # The 100k run is about peak RSS only, and takes most of the bench's time: it goes in the background,
        # its client and simulator at the lowest CPU priority, while the low rates (which need a fraction of
        # a core, and get it first) run one at a time. The rates that need the cores run alone after it.
        with ThreadPoolExecutor(1) as background:
            large = background.submit(memory_run, bench, "run_100k", BACKGROUND_NICE)
            rates = {f"{rate:g}": rate_run(bench, rate) for rate in LOW_RATES}
            results["rates_ack_200ms"] = {
                "50": rate_run(bench, 50, sim_args=("--ack-delay-ms", "200"), name="ack200")
            }
            results["restart"] = restart_run(bench)
            memory_detail["run_100k"] = large.result()
        rates.update({f"{rate:g}": rate_run(bench, rate) for rate in RATES if rate not in LOW_RATES})
        results["rates"] = rates
        memory = {key: run["client_peak_rss_mib"] for key, run in memory_detail.items()}
        results["memory_mib"] = {"read_validate_1m": read["peak_rss_mib"], **memory}
        results["client_cpu_ms_per_child"] = rates["100"]["client_cpu_ms_per_child"]
        results["sim_cpu_ms_per_child"] = rates["100"]["sim_cpu_ms_per_child"]
        results["client_cpu_ms_per_child_keepalive"] = memory_detail["run_10k"]["client_cpu_ms_per_child"]
        results["sim_cpu_ms_per_child_keepalive"] = memory_detail["run_10k"]["sim_cpu_ms_per_child"]
        results["cpu_breakdown_ms_per_child"] = profile_run(bench)
        results["detail"] = {
            "read_validate_1m": read,
            "memory_runs": memory_detail,
            "inbound_connection_ms": inbound_connections(bench),
        }
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_1m_at_end"] = os.getloadavg()[0]
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_table(results)
    print(f"\n{results['bench_seconds']} s; figures in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
