"""Cause x intervention matrix on the organism zoo: fraction of each planted cause's errors each intervention fixes.

Rows: planted organisms; columns: interventions (lvlm_probe.interventions); controls of Yin et al. 2025 beside them
(greedy, plausibility-only, yes-ratio-matched for yes/no questions). methods.md §9.2 states the expected pattern;
``intended`` names, per cause, the intervention expected to fix it (the confirming intervention of its stage).
Every intervention re-decodes all items; ``reduction`` is the net reduction (planted errors fixed minus
planted-pattern errors it introduces elsewhere, per planted error), ``effect`` the reduction beyond the best control
of the row. Target: each intended
intervention's effect on its own cause is larger than on any cause it is not intended for.

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
    ap.add_argument("--figure", default=None,
                    help="write the heat maps here (PATH.pdf/.png: fraction fixed; PATH_effect.pdf/.png: effect)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = ap.parse_args()
    import pandas as pd
    import torch

    from lvlm_probe.organisms.mitigation import CAUSES, CONTROLS, cause_intervention_matrix

    torch.set_num_threads(1)
    t0 = time.time()
    causes = tuple(args.causes.split(",")) if args.causes else CAUSES
    r = cause_intervention_matrix(causes, n=args.n, seed=args.seed)
    pd.set_option("display.width", 200)
    for col, title in (("fixed_fraction", "fraction of planted errors fixed (the same claim no longer wrong)"),
                       ("reduction", "net reduction: (planted errors fixed - planted-pattern errors introduced) / planted")):
        tab = r["table"].pivot(index="cause", columns="intervention", values=col).reindex(list(causes))
        tab["n_errors"] = pd.Series(r["controls"]["n_errors"])
        print(f"\n{title} (rows: planted cause, columns: intervention):")
        print(tab.round(2).to_string())
    print("\neffect = reduction beyond the best control of the row (rerun, plausibility_only):")
    print(pd.DataFrame(r["effect"]).T.round(2).to_string())
    print("\nintended:", r["intended"])
    print("target (the intended effect is larger on its own cause than on any cause it is not intended for):",
          r["target"])
    print("strict (larger than on every other cause, also one that shares the intervention):", r["target_strict"])
    if len(r["yes_no"]):
        print("\nyes/no control (method vs greedy shifted to the method's yes-ratio):")
        print(r["yes_no"].round(3).to_string(index=False))
    print(f"\n({time.time() - t0:.0f} s, n={args.n} items per organism, seed {args.seed})")
    if args.figure:
        from lvlm_probe.plotting import plot_intervention_matrix, save_figure

        save_figure(plot_intervention_matrix(r["table"], intended=r["intended"]), args.figure)
        eff = r["table"][~r["table"].intervention.isin(CONTROLS)].copy()
        eff["effect"] = [r["effect"][c][m] for c, m in zip(eff.cause, eff.intervention)]
        save_figure(plot_intervention_matrix(eff, intended=r["intended"], value="effect"), f"{args.figure}_effect")
    if args.json:
        out = {"matrix": r["matrix"], "reduction": r["reduction"], "effect": r["effect"], "intended": r["intended"],
               "controls": r["controls"], "target": r["target"], "target_strict": r["target_strict"],
               "n": args.n, "seed": args.seed, "seconds": round(time.time() - t0, 1)}
        from lvlm_probe._json import dumps_strict

        print(dumps_strict(out))


if __name__ == "__main__":
    main()
