"""Planted-cause benchmark: every planted organism on fresh seeds → planted vs diagnosed cause.

Prints the confusion matrix (planted stage × diagnosed stage, and by level), per-organism recall, the
balanced accuracy (target >= 0.90, goal 0.95) and how the clean organism's own errors were diagnosed.

    python benchmarks/planted_causes.py [--n 40] [--seed 101] [--out runs/planted]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="triggering scenes per organism")
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--out", default=None, help="also write errors.csv, confusion.csv and a figure here")
    args = ap.parse_args()
    import pandas as pd

    from lvlm_probe.organisms.validate import planted_cause_benchmark

    t0 = time.time()
    r = planted_cause_benchmark(n=args.n, seed=args.seed)
    pd.set_option("display.width", 200)
    print("\nplanted stage (rows) x diagnosed stage (columns):")
    print(r["confusion"].to_string())
    print("\nplanted level x diagnosed level:")
    print(r["level_confusion"].to_string())
    print("\nper organism:")
    print(r["per_organism"].to_string())
    print("\nclean organism's own errors, diagnosed stage:", r["clean"].to_dict())
    print(f"\nbalanced accuracy (stage): {r['balanced_accuracy']:.3f}   target >= 0.90, goal 0.95")
    print(f"balanced accuracy (level): {r['level_balanced_accuracy']:.3f}")
    print(f"({time.time() - t0:.0f} s, n={args.n} per organism, seed {args.seed})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        r["errors"].to_csv(out / "errors.csv", index=False)
        r["confusion"].to_csv(out / "confusion.csv")
        (out / "summary.json").write_text(json.dumps({
            "balanced_accuracy": r["balanced_accuracy"], "level_balanced_accuracy": r["level_balanced_accuracy"],
            "n": args.n, "seed": args.seed}, indent=1))
        from lvlm_probe.plotting import plot_confusion, save_figure

        save_figure(plot_confusion(r["confusion"]), out / "confusion")


if __name__ == "__main__":
    main()
