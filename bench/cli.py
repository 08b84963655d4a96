"""CPU time of ``bookingbot`` start-up: ``--help``, ``check-config`` and ``extract`` next to ``python -c pass``.

Each command runs once to warm up, then ``--runs`` times as a fresh process; its CPU time (user + system, from
``wait4``) is taken rather than wall time, so that other work on a shared machine inflates it as little as
possible. The median of the runs minus the median of bare ``python -c pass`` is the command's start-up cost.

Usage: ``make bench-cli`` or ``python -m bench.cli [--runs N]``.
Last line: ``cli_startup_ms=X``: the largest of the three costs, in ms (target: <= 500).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 500.0
# Bytecode is cached as on a user's machine (an environment may set this to keep source trees clean, which
# would make every run measure the compiler); one unmeasured run of each command writes the cache.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _bookingbot() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else ``python -m bot``."""
    script = Path(sys.executable).with_name("bookingbot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


def commands() -> dict[str, list[str]]:
    bot = _bookingbot()
    config = ["--config", str(ROOT / "config.yaml")]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "bookingbot --help": [*bot, "--help"],
        "bookingbot check-config": [*bot, "check-config", *config],
        "bookingbot extract": [*bot, "extract", *config, "--tenant", "demo", "--text", "haircut tomorrow at 5pm",
                               "--now", "2026-11-23T09:00:00+00:00"],
    }


def cpu_ms(argv: list[str]) -> float:
    """One run's user + system CPU time in ms; a failing command is an error, not a number."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace')}")
    return (usage.ru_utime + usage.ru_stime) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    medians: dict[str, float] = {}
    for name, argv in commands().items():
        cpu_ms(argv)  # warm-up: bytecode cache, page cache
        samples = [cpu_ms(argv) for _ in range(runs)]
        medians[name] = statistics.median(samples)
    base = medians.pop("python -c pass")
    print(f"{'command':<26}{'CPU ms (median)':>16}{'above python':>14}")
    print(f"{'python -c pass':<26}{base:>16.0f}{'':>14}")
    for name, ms in medians.items():
        print(f"{name:<26}{ms:>16.0f}{ms - base:>14.0f}")
    worst = max(ms - base for ms in medians.values())
    verdict = "meets" if worst <= TARGET_MS else "MISSES"
    print(f"runs={runs} target<={TARGET_MS:.0f} ms above python: {verdict}")
    print(f"cli_startup_ms={worst:.0f}")


if __name__ == "__main__":
    main()
