"""`make mutation`: mutmut over the modules in pyproject's [tool.mutmut], one line per module.

mutmut copies the project into mutants/, mutates `only_mutate`, runs the selected fast tests once
to learn which tests reach which function, then runs each mutant against those tests only. This
script runs it from scratch (or with --keep, reusing mutants/ and its cached results), then prints
`module: K killed of N (P%)` per module and the total, and exits non-zero below --minimum percent.
A mutant counts as killed when a test failed or timed out with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import _pytest.nodes

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "mutants" / "mutmut.log"


def modules() -> list[str]:
    """The modules pyproject.toml asks mutmut to mutate."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    names: list[str] = config["only_mutate"]
    return names


def run_mutmut(children: int) -> bool:
    """Run `mutmut run` in this process (it forks one child per mutant), its progress output going
    to LOG; whether it finished."""
    # mutmut 3.8.0 reads `Item._nodeid`, which pytest 9 only has as the public `nodeid`.
    if not hasattr(_pytest.nodes.Node, "_nodeid"):
        _pytest.nodes.Node._nodeid = property(lambda node: node.nodeid)  # type: ignore[attr-defined]
    from mutmut.__main__ import cli

    LOG.parent.mkdir(exist_ok=True)
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    with LOG.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            cli(["run", "--max-children", str(children)])
        except SystemExit as stop:
            return stop.code in (0, None)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return True


def counts(module: str) -> tuple[int, int, list[str]]:
    """Killed and total mutants of one module, and the names of those not killed."""
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.exists():  # no function in it was mutated
        return 0, 0, []
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    from mutmut.stats import status_by_exit_code

    alive = sorted(
        name for name, code in codes.items() if status_by_exit_code[code] not in {"killed", "timeout"}
    )
    return len(codes) - len(alive), len(codes), alive


def line(name: str, killed: int, total: int) -> str:
    """`name: K killed of N (P%)`."""
    percent = 100.0 * killed / total if total else 100.0
    return f"{name}: {killed} killed of {total} ({percent:.1f}%)"


def quiet_resource_warnings(unraisable: sys.UnraisableHookArgs) -> None:
    """Drop the ResourceWarning of mutmut's stray /dev/null handle; report anything else."""
    if unraisable.exc_type is not ResourceWarning:
        sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def test_database_server() -> Iterator[None]:
    """TEST_DATABASE_URL for the tests of every mutant: one embedded cluster for the whole run when
    none is set, so each mutant's pytest run creates a database on it instead of a cluster."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield
        return
    sys.path.insert(0, str(ROOT))
    from embedded_db import start_embedded_postgres, stop_embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="quiz-mutation-"))
    os.environ["TEST_DATABASE_URL"] = start_embedded_postgres(parent / "pgdata")
    owner = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == owner:  # not a forked mutmut worker unwinding: the cluster is its own
            del os.environ["TEST_DATABASE_URL"]
            stop_embedded_postgres(parent / "pgdata")
            shutil.rmtree(parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run mutmut, report per module and in total; 1 when the total is below the minimum."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ and its cached results")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--minimum", type=float, default=90.0, help="lowest acceptable total percent")
    parser.add_argument("--survivors", action="store_true", help="list the mutants not killed")
    args = parser.parse_args(argv)
    sys.unraisablehook = quiet_resource_warnings
    started = time.monotonic()
    os.chdir(ROOT)  # mutmut reads pyproject.toml and writes mutants/ in the current folder
    if not args.keep:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    print(f"make mutation: mutmut is running (its output: {LOG.relative_to(ROOT)})", flush=True)
    with test_database_server():
        finished = run_mutmut(args.children)
    if not finished:
        print("".join(LOG.read_text(errors="replace").splitlines(keepends=True)[-40:]))
        print("mutation: mutmut did not finish")
        return 1
    all_killed = all_total = 0
    report = []
    for module in modules():
        killed, total, alive = counts(module)
        all_killed, all_total = all_killed + killed, all_total + total
        report.append(line(module, killed, total))
        if args.survivors:
            report += [f"    {name}" for name in alive]
    report.append(line("mutation", all_killed, all_total))
    print("\n".join(report))
    print(f"(in {time.monotonic() - started:.0f} s; `.venv/bin/mutmut show <name>` shows a mutant)")
    return 0 if all_total and 100.0 * all_killed / all_total >= args.minimum else 1


if __name__ == "__main__":
    sys.exit(main())
