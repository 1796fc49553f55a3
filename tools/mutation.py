"""Mutation testing, module by module, each against its own unit tests (issue 8; `make mutation`).

mutmut 3 cannot sample, so this script drives it:

1. It lists every mutant of each module in tools/mutation.toml with mutmut's own generator (same names as
   `mutmut run` gives them) and describes each one by its function and changed line.
2. It draws a seeded random sample of at most `sample` mutants per module. Sampled mutants listed in
   tools/mutation-equivalents.toml (equivalent: no test could tell them apart) are excluded, not run.
3. Modules with the same unit tests form a group. For each group, one at a time, it stages a copy of the
   tree in mutants/<group>/ whose pyproject.toml holds the group's mutmut settings (mutate only the group's
   modules; select only its tests), then runs `mutmut run <sampled names>` there.
4. It reads mutmut's verdicts and prints a table per module: killed, timed out, survived (a mutant no test
   of the module even reaches counts as survived), excluded, and the score
   (killed + timed out) / (sampled - excluded). Survivors are listed with their diff.

The table in tools/MUTATION.md (between the markers) is rewritten with the rows of the modules just run;
mutants/results.json holds every sampled mutant and its verdict. Exit status 1 if a module scores below
`required`, 2 on a usage or tooling error.

    .venv/bin/python tools/mutation.py                        # every module in tools/mutation.toml
    .venv/bin/python tools/mutation.py batch/ebxml.py         # only these modules (their groups)
    .venv/bin/python tools/mutation.py --list batch/mime.py   # the sample and its diffs, nothing run
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
CONFIG = TOOLS / "mutation.toml"
EQUIVALENTS = TOOLS / "mutation-equivalents.toml"
REPORT = TOOLS / "MUTATION.md"
WORK = REPO / "mutants"
# What a staged copy needs besides the modules' package: the simulator (tests import it), the files the
# tests read and the pytest settings. tests/ and pyproject.toml are copied into mutmut's own tree by mutmut.
STAGED = ("batch", "spine_sim", "tests", "jobs", "sample_data", "README.md", "pyproject.toml")
ALSO_COPY = ("spine_sim", "jobs", "sample_data", "README.md")
# Imported once by mutmut's fork server to save each mutant the time: none of them starts a thread.
FORK_SAFE_PRELOAD = ("hypothesis", "lxml.etree", "xmlschema", "anyio", "pytest_asyncio", "httpx")
TABLE_BEGIN = "<!-- mutation-table:begin (written by tools/mutation.py) -->"
TABLE_END = "<!-- mutation-table:end -->"
TABLE_HEAD = (
    "| Module | Mutants | Sampled | Killed | Timed out | Survived | Excluded (equivalent) | Score |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|\n"
)

# mutmut's exit codes (mutmut/stats.py status_by_exit_code), folded into the three verdicts scored here.
# Killed: a test failed (1), pytest failed internally (3) or could not collect the tests, say a test module
# that calls the mutant while it is imported (2; mutmut's "interrupted by user", which cannot happen in a batch
# run), the test runner raised (255, mutmut's worker exits with -1; mutmut files it under timeouts), or the
# mutant crashed the process (-11).
KILLED_CODES = {1, 2, 3, 255, -11}
TIMEOUT_CODES = {-24, 24, 152, 36, -9}  # SIGXCPU at the CPU limit, or SIGKILL at the hard limit


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's id, e.g. batch.ebxml.x_build_message__mutmut_12 (changes when the code does)
    module: str  # batch/ebxml.py
    function: str  # build_message, or Class.method
    line: int  # where the change is, in the module as it is now
    before: str  # the changed line(s) of the function, stripped
    after: str

    def describe(self) -> str:
        return f"{self.module}:{self.line} {self.function}: {self.before!r} -> {self.after!r}"


@dataclass(frozen=True)
class Equivalent:
    module: str
    function: str
    before: str
    after: str
    reason: str

    def matches(self, mutant: Mutant) -> bool:
        return (
            self.module == mutant.module
            and self.function == mutant.function
            and _norm(self.before) == _norm(mutant.before)
            and _norm(self.after) == _norm(mutant.after)
        )


@dataclass
class ModuleResult:
    module: str
    mutants: int
    sampled: int
    killed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.sampled - len(self.excluded)

    @property
    def score(self) -> float | None:
        if not self.scored:
            return None
        return 100.0 * (len(self.killed) + len(self.timed_out)) / self.scored

    def row(self) -> str:
        score = "no mutants" if self.score is None else f"{self.score:.1f}%"
        return (
            f"| `{self.module}` | {self.mutants} | {self.sampled} | {len(self.killed)} | {len(self.timed_out)} "
            f"| {len(self.survived)} | {len(self.excluded)} | {score} |"
        )


def _norm(text: str) -> str:
    return " ".join(text.split())


# --- listing mutants -------------------------------------------------------------------------------------


def list_mutants(module: str, root: Path = REPO) -> list[Mutant]:
    """Every mutant mutmut makes of `module` (a path relative to `root`), in mutmut's order."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider
    from mutmut import configuration

    # mutmut reads its settings from ./pyproject.toml; here only the defaults matter (no pragma patterns).
    configuration._config_reader = lambda: lambda key, default: {"source_paths": ["batch"]}.get(key, default)
    configuration.reset_config()
    from mutmut.mutation.file_mutation import create_mutations, deep_replace, group_by_top_level_node
    from mutmut.mutation.trampoline_templates import mangle_function_name
    from mutmut.utils.format_utils import get_mutant_name

    source = (root / module).read_text()
    tree, mutations, _, _ = create_mutations(module, source)
    positions = MetadataWrapper(tree, unsafe_skip_copy=True).resolve(PositionProvider)
    by_function = group_by_top_level_node(mutations)

    functions: list[tuple[cst.FunctionDef, str | None]] = []
    for statement in tree.body:
        if isinstance(statement, cst.FunctionDef):
            functions.append((statement, None))
        elif isinstance(statement, cst.ClassDef) and isinstance(statement.body, cst.IndentedBlock):
            functions += [
                (m, statement.name.value) for m in statement.body.body if isinstance(m, cst.FunctionDef)
            ]

    source_lines = source.splitlines()
    found: list[Mutant] = []
    for function, cls in functions:
        original = tree.code_for_node(function).splitlines()
        # the function's rendered code starts with any comments above it: find where its first line is
        first = positions[function].start.line
        skip = next(i for i, text in enumerate(original) if text.strip() == source_lines[first - 1].strip())
        mangled = mangle_function_name(name=function.name.value, class_name=cls) + "__mutmut"
        for number, mutation in enumerate(by_function.get(function, ()), start=1):
            mutated = deep_replace(function, mutation.original_node, mutation.mutated_node)
            assert isinstance(mutated, cst.FunctionDef)
            changed = tree.code_for_node(mutated).splitlines()
            offset, before, after = _changed_lines(original, changed)
            found.append(
                Mutant(
                    name=get_mutant_name(Path(module), f"{mangled}_{number}"),
                    module=module,
                    function=f"{cls}.{function.name.value}" if cls else function.name.value,
                    line=first + offset - skip,
                    before=before,
                    after=after,
                )
            )
    return found


def _changed_lines(original: list[str], changed: list[str]) -> tuple[int, str, str]:
    """Where the first change is (an index into `original`) and the changed lines before and after."""
    matcher = difflib.SequenceMatcher(a=original, b=changed, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    removed = [original[i].strip() for _, i1, i2, _, _ in changes for i in range(i1, i2)]
    added = [changed[j].strip() for _, _, _, j1, j2 in changes for j in range(j1, j2)]
    return changes[0][1], " / ".join(removed), " / ".join(added)


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seed: int
    sample: int
    required: float
    modules: dict[str, tuple[str, ...]]


def load_settings() -> Settings:
    data = tomllib.loads(CONFIG.read_text())
    modules = {path: tuple(tests) for path, tests in data["modules"].items()}
    return Settings(
        seed=int(data["seed"]), sample=int(data["sample"]), required=float(data["required"]), modules=modules
    )


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENTS.exists():
        return []
    entries = tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    equivalents = []
    for entry in entries:
        missing = {"module", "function", "before", "after", "reason"} - entry.keys()
        if missing or not entry["reason"].strip():
            raise SystemExit(f"{EQUIVALENTS.name}: an entry lacks {sorted(missing) or ['a reason']}: {entry}")
        equivalents.append(Equivalent(**{k: str(v) for k, v in entry.items()}))
    return equivalents


def draw_sample(mutants: Sequence[Mutant], *, seed: int, size: int, module: str) -> list[Mutant]:
    """A seeded sample: the same mutants, in the same order, for the same module source and seed."""
    if len(mutants) <= size:
        return list(mutants)
    rng = random.Random(f"{seed}:{module}")  # noqa: S311 - a reproducible sample, not a secret
    order = {m.name: i for i, m in enumerate(mutants)}
    return sorted(rng.sample(list(mutants), size), key=lambda m: order[m.name])


# --- running mutmut --------------------------------------------------------------------------------------


def group_name(tests: Sequence[str]) -> str:
    return "+".join(Path(t).stem.removeprefix("test_") for t in tests)


def stage(directory: Path, modules: Sequence[str], tests: Sequence[str]) -> None:
    """A copy of the tree whose pyproject.toml carries this group's mutmut settings."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in STAGED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, directory / name)
    # Tests find ../shared beside the checkout (the CP-IS schemas); mutmut runs them two levels down.
    shared = REPO.parent / "shared"
    if shared.exists():
        (directory / "shared").symlink_to(shared)
    settings = {
        "source_paths": ["batch"],
        "only_mutate": list(modules),
        "also_copy": list(ALSO_COPY),
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        "use_git_change_detection": False,
        # polars starts a thread pool when imported, and a process forked after that deadlocks on its first
        # polars call. So mutants run from mutmut's fork server, which imports only what is fork-safe.
        "process_isolation": "forkserver",
        "forkserver_warmup": "import",
        "preload_modules_file": "preload.txt",
    }
    (directory / "preload.txt").write_text("\n".join(FORK_SAFE_PRELOAD) + "\n")
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    with (directory / "pyproject.toml").open("a") as f:
        f.write("\n".join(lines) + "\n")


def run_group(
    directory: Path, names: Sequence[str], *, max_children: int, verbose: bool
) -> dict[str, int | None]:
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(max_children), *names]
    log = directory / "mutmut.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with log.open("w") as out:
        process = subprocess.run(
            command, cwd=directory, stdout=None if verbose else out, stderr=subprocess.STDOUT, env=env
        )
    if process.returncode != 0:
        tail = "" if verbose else "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"mutmut failed in {directory} (exit {process.returncode}); log {log}\n{tail}")
    verdicts: dict[str, int | None] = {}
    for meta in (directory / "mutants").rglob("*.py.meta"):
        verdicts.update(json.loads(meta.read_text())["exit_code_by_key"])
    return verdicts


def verdict(code: int | None) -> str:
    if code in KILLED_CODES:
        return "killed"
    if code in TIMEOUT_CODES:
        return "timed out"
    if code is None:
        return "not run"
    return (
        "survived"  # 0, or 33/5 (no test of the module reaches it), or an exit code mutmut calls suspicious
    )


# --- the report ------------------------------------------------------------------------------------------


def write_table(results: Iterable[ModuleResult], order: Sequence[str], stamp: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else f"# Mutation scores\n\n{TABLE_BEGIN}\n{TABLE_END}\n"
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{REPORT} has lost its table markers")
    head, rest = text.split(TABLE_BEGIN, 1)
    table, tail = rest.split(TABLE_END, 1)
    rows = {}
    for line in table.splitlines():
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = line
    rows.update({r.module: r.row() for r in results})
    ordered = [rows[m] for m in order if m in rows] + [rows[m] for m in rows if m not in order]
    block = f"{TABLE_BEGIN}\n_Last run: {stamp}._\n\n{TABLE_HEAD}" + "\n".join(ordered) + f"\n{TABLE_END}"
    REPORT.write_text(head + block + tail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="only these modules (paths as in tools/mutation.toml)")
    parser.add_argument("--max-children", type=int, default=2, help="mutmut workers (default 2)")
    parser.add_argument("--list", action="store_true", help="print the sampled mutants; run nothing")
    parser.add_argument("--no-write", action="store_true", help=f"leave {REPORT.name} as it is")
    parser.add_argument("--verbose", action="store_true", help="show mutmut's own output")
    args = parser.parse_args(argv)

    settings = load_settings()
    unknown = [m for m in args.modules if m not in settings.modules]
    if unknown:
        print(f"not in {CONFIG.name}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    selected = args.modules or list(settings.modules)
    missing = sorted({t for m in selected for t in settings.modules[m] if not (REPO / t).exists()})
    if missing:
        print(f"unit tests named in {CONFIG.name} do not exist: {', '.join(missing)}", file=sys.stderr)
        return 2
    equivalents = load_equivalents()

    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for module in selected:
        groups[settings.modules[module]].append(module)
    roots = {m: REPO for m in selected}
    if not args.list:
        # Every group is staged before the first runs, so the whole run sees the tree as it was at the start.
        for tests, modules in groups.items():
            stage(WORK / group_name(tests), modules, tests)
            roots.update({m: WORK / group_name(tests) for m in modules})

    all_mutants: dict[str, list[Mutant]] = {m: list_mutants(m, roots[m]) for m in selected}
    samples = {
        m: draw_sample(ms, seed=settings.seed, size=settings.sample, module=m)
        for m, ms in all_mutants.items()
    }
    used: set[int] = set()
    excluded: dict[str, Equivalent] = {}
    for mutants in all_mutants.values():
        for mutant in mutants:
            for i, eq in enumerate(equivalents):
                if eq.matches(mutant):
                    used.add(i)
                    excluded[mutant.name] = eq
    stale = [eq for i, eq in enumerate(equivalents) if i not in used and eq.module in selected]
    for eq in stale:
        print(
            f"warning: {EQUIVALENTS.name} entry matches no mutant: {eq.module} {eq.function}: {eq.before!r}"
        )

    if args.list:
        for module, sample in samples.items():
            print(f"{module}: {len(sample)} of {len(all_mutants[module])} mutants")
            for mutant in sample:
                mark = "  (equivalent)" if mutant.name in excluded else ""
                print(f"  {mutant.name}  {mutant.describe()}{mark}")
        return 0

    results: dict[str, ModuleResult] = {}
    records: list[dict[str, object]] = []
    started = time.monotonic()
    for tests, modules in groups.items():
        to_run = [m.name for module in modules for m in samples[module] if m.name not in excluded]
        directory = WORK / group_name(tests)
        print(f"== {', '.join(modules)}: {len(to_run)} mutants against {', '.join(tests)}", flush=True)
        verdicts: dict[str, int | None] = {}
        if to_run:
            group_start = time.monotonic()
            verdicts = run_group(directory, to_run, max_children=args.max_children, verbose=args.verbose)
            print(f"   done in {time.monotonic() - group_start:.0f} s", flush=True)
            unknown_names = set(to_run) - verdicts.keys()
            if unknown_names:
                raise SystemExit(
                    f"mutmut does not know {sorted(unknown_names)[:3]}…: has its naming changed?"
                )
        for module in modules:
            result = ModuleResult(module, mutants=len(all_mutants[module]), sampled=len(samples[module]))
            for mutant in samples[module]:
                if mutant.name in excluded:
                    result.excluded.append(mutant.name)
                    status = "excluded"
                else:
                    status = verdict(verdicts.get(mutant.name))
                    if status == "not run":
                        raise SystemExit(f"mutmut did not run {mutant.name}; see {directory / 'mutmut.log'}")
                    {"killed": result.killed, "timed out": result.timed_out, "survived": result.survived}[
                        status
                    ].append(mutant.name)
                records.append({**asdict(mutant), "status": status, "exit_code": verdicts.get(mutant.name)})
            results[module] = result

    by_name = {m.name: m for ms in all_mutants.values() for m in ms}
    print()
    print(TABLE_HEAD + "\n".join(r.row() for r in results.values()))
    below = [r for r in results.values() if r.score is not None and r.score < settings.required]
    for result in results.values():
        if result.excluded:
            print(f"\nExcluded as equivalent in {result.module}:")
            for name in result.excluded:
                print(f"  {by_name[name].describe()}\n      reason: {excluded[name].reason}")
        if result.survived:
            print(f"\nSurvived in {result.module}:")
            for name in result.survived:
                print(f"  {by_name[name].describe()}  [{name}]")
    elapsed = time.monotonic() - started
    print(f"\n{len(records)} sampled mutants, {elapsed / 60:.1f} min; seed {settings.seed}")

    WORK.mkdir(exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(records, indent=1))
    if not args.no_write:
        stamp = (
            f"seed {settings.seed}, at most {settings.sample} mutants per module, {time.strftime('%Y-%m-%d')}"
        )
        write_table(results.values(), list(settings.modules), stamp)
    if below:
        print(f"below {settings.required:.0f}%: {', '.join(r.module for r in below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
