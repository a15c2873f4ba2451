"""Competence off the planted factor: each organism's task accuracy beside ``clean``'s on the same items.

Issue 20, item 4: on the task families its planted factor does not touch
(:data:`lvlm_probe.organisms.check.FACTOR_TASKS`), a planted organism should be within ``--tol`` (0.05) of
``clean``. Items come from the unbiased world (:func:`lvlm_probe.organisms.check.competence`), ``n // 5`` per
family; at n = 1000 a family's accuracy has a standard error of about 0.03, so smaller runs cannot resolve 0.05.

    python benchmarks/competence.py [--n 1000] [--seed 1] [--organisms a,b] [--tol 0.05] [--json]

With ``--json`` the last line printed is ``{"table": [{organism, task, accuracy, clean, delta, n_items, factor},
...], "off_factor_within": {organism: bool, or null where the factor touches every family},
"worst_off_factor": {organism: [task, delta]}, "n", "seed", "tol"}``.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="task items (n // 5 per family)")
    ap.add_argument("--seed", type=int, default=1, help="scene seed (training used other streams)")
    ap.add_argument("--organisms", default=None, help="comma-separated organisms (default: the zoo's planted ones)")
    ap.add_argument("--tol", type=float, default=0.05, help="allowed |accuracy - clean| off the planted factor")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = ap.parse_args()
    import pandas as pd
    import torch

    from lvlm_probe.organisms.check import competence
    from lvlm_probe.organisms.zoo import ZOO

    torch.set_num_threads(1)
    names = args.organisms.split(",") if args.organisms else [n for n in ZOO if n != "clean"]
    t0 = time.time()
    df = competence(names, seed=args.seed, n=args.n, progress=True)
    wide = df.pivot(index="organism", columns="task", values="delta").reindex(["clean", *names])
    mark = df.pivot(index="organism", columns="task", values="factor").reindex(["clean", *names])
    shown = wide.round(2).astype(str).where(~mark.astype(bool), wide.round(2).astype(str) + "*")
    clean = df[df.organism == "clean"].set_index("task")
    shown.loc["clean"] = clean.accuracy.round(3).astype(str)
    pd.set_option("display.width", 200)
    print(f"\naccuracy - clean per task family (* = the planted factor touches it; the clean row is its accuracy), "
          f"n={args.n}, seed {args.seed}:")
    print(shown.to_string())
    off = df[(df.organism != "clean") & ~df.factor.astype(bool)]
    within, worst = {}, {}
    for name in names:
        o = off[off.organism == name]
        within[name] = bool((o.delta.abs() <= args.tol).all()) if len(o) else None  # None: the factor touches all
        if len(o):
            w = o.loc[o.delta.abs().idxmax()]
            worst[name] = [str(w.task), round(float(w.delta), 4)]
    print(f"\noff the factor within ±{args.tol}:", within)
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        from lvlm_probe._json import dumps_strict

        print(dumps_strict({"table": df.to_dict(orient="records"), "off_factor_within": within,
                            "worst_off_factor": worst, "n": args.n, "seed": args.seed, "tol": args.tol}))


if __name__ == "__main__":
    main()
