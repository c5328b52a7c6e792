"""What every benchmark shares: where the numbers were measured, and its report: a JSON record in
``benchmarks/results/`` (or ``$SDE_JAX_RESULTS_DIR``: tests write elsewhere) and its section of the README."""

from __future__ import annotations

import json
import os
import argparse
import platform
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")


def results_dir() -> str:
    """Where records go: ``$SDE_JAX_RESULTS_DIR`` if set, else ``benchmarks/results``."""
    return os.environ.get("SDE_JAX_RESULTS_DIR") or os.path.join(HERE, "results")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def device_info() -> str:
    """One line naming the device: ``cpu (2 cores, <model>)`` or ``gpu (NVIDIA H100 ...)``."""
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {cpu_model()})"
    return f"{d.platform} ({d.device_kind})"


def machine_info() -> dict:
    """Where the numbers come from: CPU, cores, load, library versions, and whether there is an accelerator."""
    import diffrax
    import jax
    import jaxlib

    backend = jax.default_backend()
    return {
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "diffrax": diffrax.__version__, "default_backend": backend, "devices": [str(d) for d in jax.devices()],
        "accelerator": None if backend == "cpu" else jax.devices()[0].device_kind,
        "load_average_1m_start": os.getloadavg()[0],
        "note": ("no GPU/TPU on this machine: several devices are simulated CPU devices sharing the same cores, so "
                 "N devices measure pmap's overhead, not a speed-up; FLOP/s fraction of peak is not given for CPUs"
                 if backend == "cpu" else "accelerator run"),
    }


def write_readme_section(text: str, begin: str, end: str, path: str = README) -> None:
    """Replace (or append) the text between the markers ``begin`` and ``end`` of ``path``, leaving other sections
    untouched."""
    body = f"{begin}\n{text}\n{end}"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + body + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + body + "\n"
    with open(path, "w") as f:
        f.write(new)


def write_result(name: str, result: dict) -> str:
    """Write ``result`` (plus the 1-minute load average: context for timings on a shared CPU) to
    ``<results_dir>/<name>.json``; return its path."""
    result = {**result, "load_avg_1min": round(os.getloadavg()[0], 2)}
    os.makedirs(results_dir(), exist_ok=True)
    path = os.path.join(results_dir(), f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(f"wrote {path}")
    return path


def load_results(prefix: str) -> list[tuple[str, dict]]:
    """``(name, record)`` of every ``<prefix>*.json`` in the results folder, sorted by name."""
    folder = results_dir()
    rows = []
    for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if fname.startswith(prefix) and fname.endswith(".json"):
            with open(os.path.join(folder, fname)) as f:
                rows.append((fname[:-5], json.load(f)))
    return rows


def write_report(name: str, result: dict, prefix: str, render: Callable[[list[tuple[str, dict]]], str],
                 section: str, readme: bool = True) -> str:
    """The one report writer: the JSON record ``<name>.json``, then (with ``readme``) the README section between
    ``<!-- section:begin -->`` and ``<!-- section:end -->`` re-rendered by ``render`` from every ``<prefix>*``
    record (one run refreshes the table it belongs to, keeping the other rows)."""
    path = write_result(name, result)
    if readme:
        write_readme_section(render(load_results(prefix)), f"<!-- {section}:begin -->", f"<!-- {section}:end -->")
        print(f"updated {README}")
    return path


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for None, floats to ``digits`` decimals (scientific when smaller)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.1e}"
    return str(v)


def load_note(rows: list[tuple[str, dict]], timing: str = "timings are minima over repeats") -> list[str]:
    """The shared-machine sentence for a table of records carrying ``load_avg_1min`` (empty if none does), ending
    with how the ``timing`` was taken."""
    loads = sorted({r["load_avg_1min"] for _, r in rows if r.get("load_avg_1min") is not None})
    if not loads:
        return []
    return [f"Shared machine: 1-minute load average {loads[0]}-{loads[-1]} on {os.cpu_count()} cores during these "
            f"runs (each JSON has `load_avg_1min`); {timing}.", ""]


def add_solve_args(p: argparse.ArgumentParser, name_help: str) -> None:
    """The options every likelihood benchmark shares: PF-ODE eps and tolerances, seed, record name, README refresh."""
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help=f"result name (default {name_help})")
    p.add_argument("--no_readme", action="store_true", help="do not refresh benchmarks/README.md")


def run_benchmark(args: Any, parse_args: Callable, run: Callable[[Any], dict], name: Callable[[Any], str],
                  prefix: str, render: Callable, section: str, suite: list[list[str]] | None = None) -> None:
    """Run one configuration (or, with ``args.suite``, each of ``suite``'s argument lists with ``args.seed``), write
    each record and its README section with :func:`write_report`, and print the scalar results and the wall time."""
    start = time.perf_counter()
    runs = [args]
    if suite and getattr(args, "suite", False):
        runs = [parse_args(extra + ["--seed", str(args.seed)] + (["--no_readme"] if args.no_readme else []))
                for extra in suite]
    for one in runs:
        result = run(one)
        write_report(one.name or name(one), result, prefix, render, section, readme=not one.no_readme)
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    print(f"{time.perf_counter() - start:.0f} s")
