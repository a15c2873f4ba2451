"""Cause x intervention matrix on the organism zoo: fraction of each planted cause's errors each intervention fixes.

Rows: planted organisms; columns: interventions (lvlm_probe.interventions); controls of Yin et al. 2025 beside them
(greedy, plausibility-only, yes-ratio-matched for yes/no questions). methods.md §9.2 states the expected pattern;
``intended`` names, per cause, the intervention expected to fix it. Target: each intended intervention fixes a larger
fraction of its own cause's errors than of any other cause's.

    python benchmarks/cause_interventions.py [--n 48] [--seed 1] [--figure runs/cause_interventions] [--json]

With ``--json`` the last line printed is ``{"matrix": {...}, "intended": {...}, "controls": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="default items per organism (half triggering scenes)")
    ap.add_argument("--seed", type=int, default=1, help="item seed (knobs were tuned on seed 0)")
    ap.add_argument("--causes", default=None, help="comma-separated organisms (default: every planted one)")
    ap.add_argument("--figure", default=None, help="write the heat map here (PATH.pdf and PATH.png)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = ap.parse_args()
    import pandas as pd
    import torch

    from lvlm_probe.organisms.mitigation import CAUSES, cause_intervention_matrix

    torch.set_num_threads(1)
    t0 = time.time()
    causes = tuple(args.causes.split(",")) if args.causes else CAUSES
    r = cause_intervention_matrix(causes, n=args.n, seed=args.seed)
    pd.set_option("display.width", 200)
    tab = r["table"].pivot(index="cause", columns="intervention", values="fixed_fraction").reindex(list(causes))
    tab["n_errors"] = pd.Series(r["controls"]["n_errors"])
    print("\nfraction of planted errors fixed (rows: planted cause, columns: intervention):")
    print(tab.round(2).to_string())
    print("\nintended:", r["intended"])
    print("target (intended fixes its own cause more than any other):", r["target"])
    if len(r["yes_no"]):
        print("\nyes/no control (method vs greedy shifted to the method's yes-ratio):")
        print(r["yes_no"].round(3).to_string(index=False))
    print(f"\n({time.time() - t0:.0f} s, n={args.n} items per organism, seed {args.seed})")
    if args.figure:
        from lvlm_probe.plotting import plot_intervention_matrix, save_figure

        save_figure(plot_intervention_matrix(r["table"], intended=r["intended"]), args.figure)
    if args.json:
        out = {"matrix": r["matrix"], "intended": r["intended"], "controls": r["controls"], "target": r["target"],
               "n": args.n, "seed": args.seed, "seconds": round(time.time() - t0, 1)}
        from lvlm_probe._json import dumps_strict

        print(dumps_strict(out))


if __name__ == "__main__":
    main()
