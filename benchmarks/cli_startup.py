"""Start-up time of the command line and of the scoring package, as ratios to ``python -c "import numpy"``.

    python benchmarks/cli_startup.py [--repeats 5]

Target: ``lvlm-probe --help`` within 3x of importing numpy (the CLI and ``lvlm_probe.benchmarks`` import no torch).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c 'import numpy' (baseline)": [sys.executable, "-c", "import numpy"],
    "lvlm-probe --help": [sys.executable, "-m", "lvlm_probe", "--help"],
    "lvlm-probe eval --help": [sys.executable, "-m", "lvlm_probe", "eval", "--help"],
    "import lvlm_probe.benchmarks": [sys.executable, "-c", "import lvlm_probe.benchmarks"],
    "import lvlm_probe (lazy)": [sys.executable, "-c", "import lvlm_probe"],
    "import torch (for scale)": [sys.executable, "-c", "import torch"],
}


def best_of(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base = None
    print(f"{'command':40s} {'seconds':>8s} {'ratio':>6s}")
    for name, cmd in CASES.items():
        t = best_of(cmd, args.repeats)
        base = base or t
        print(f"{name:40s} {t:8.3f} {t / base:6.2f}")


if __name__ == "__main__":
    main()
