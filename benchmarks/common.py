"""What every benchmark shares: where the numbers were measured, and writing its section of the README."""

from __future__ import annotations

import os
import platform

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")


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
