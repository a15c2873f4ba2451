"""Dose series: the planted error rate and the share of errors diagnosed with the planted cause, per dose.

For every organism with doses (``lvlm-probe organisms list``: ``dose``), lowest dose first:

* ``planted_error_rate``: :func:`lvlm_probe.organisms.check.check_organism` on ``n`` fresh triggering scenes (the
  organism card's measure), beside ``clean``'s rate on the same scenes;
* ``n_errors`` and ``diagnosed_planted``: the planted errors of :func:`lvlm_probe.organisms.validate.planted_errors`
  (errors with the planted pattern that ``clean`` does not make) and the share the cascade names with the planted
  stage.

    python benchmarks/doses.py [--n 200] [--seed 1] [--n-diagnose 40] [--json]

With ``--json`` the last line printed is ``{"doses": {NAME: [{dose, planted_error_rate, ...}, ...]},
"monotone": {NAME: bool}, ...}``; ``monotone``: the planted error rate rises with the dose.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="triggering scenes per dose for the planted error rate")
    ap.add_argument("--seed", type=int, default=1, help="scene seed (training used other streams)")
    ap.add_argument("--n-diagnose", type=int, default=40, help="triggering scenes per dose for the diagnosis")
    ap.add_argument("--organisms", default=None, help="comma-separated organisms with doses (default: all)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = ap.parse_args()
    import pandas as pd
    import torch

    import lvlm_probe as lp
    from lvlm_probe.organisms.check import check_organism
    from lvlm_probe.organisms.validate import planted_errors
    from lvlm_probe.organisms.zoo import DOSES, get_spec

    torch.set_num_threads(1)
    names = args.organisms.split(",") if args.organisms else list(DOSES)
    if any(n not in DOSES for n in names):
        ap.error(f"--organisms takes organisms with doses {list(DOSES)}, got {names}")
    t0 = time.time()
    clean = lp.load("organism:clean", device="cpu")
    out: dict[str, list[dict]] = {}
    for base in names:
        rows = []
        for k, dose in enumerate(DOSES[base]):
            name = f"{base}@{dose}"
            chk = check_organism(name, seed=args.seed, n=args.n, compare_clean=k == 0)
            d, _ = planted_errors(name, args.n_diagnose, args.seed, clean=clean)
            stage = get_spec(name).component
            rows.append({"dose": float(dose), "planted_error_rate": chk["planted_error_rate"],
                         "clean_planted_error_rate": chk.get("clean_planted_error_rate"),
                         "n_errors": len(d), "diagnosed_planted": float((d.stage == stage).mean()) if len(d) else None})
        out[base] = rows
        print(f"\n{base} (planted metric: {chk['planted_metric']}):")
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    monotone = {b: all(r1["planted_error_rate"] <= r2["planted_error_rate"] for r1, r2 in zip(rows, rows[1:]))
                for b, rows in out.items()}
    print(f"\nplanted error rate rises with the dose: {monotone}   ({time.time() - t0:.0f} s, n={args.n}, "
          f"seed {args.seed})")
    if args.json:
        from lvlm_probe._json import dumps_strict

        print(dumps_strict({"doses": out, "monotone": monotone, "n": args.n, "n_diagnose": args.n_diagnose,
                            "seed": args.seed, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
