"""Planted-cause benchmark: every planted organism on fresh seeds → planted vs diagnosed cause.

Prints the confusion matrix (planted stage × diagnosed stage, and by level), per-organism recall, the
balanced accuracy (target >= 0.90, goal 0.95), how the clean organism's own errors were diagnosed, and the
calibration of ``confidence``: each organism's errors get the confidence of a calibrator fitted on the other
organisms' errors (leave one organism out); the reliability table and the expected calibration error (ECE, 10
equal-width bins) compare it with how often the named stage was right.

    python benchmarks/planted_causes.py [--n 40] [--seed 101] [--out runs/planted] [--json]
        [--fit-calibrator lvlm_probe/tracing/confidence.json] [--confirm]

``--json`` prints, as the last line, one JSON object: ``balanced_accuracy``, ``level_balanced_accuracy``, ``ece``,
``per_organism``, ``reliability``, ``n``, ``seed``, ``holdout`` (per hold-out variant: ``n_errors``, ``recall``,
``level_recall``; the variants, planted on other classes, pairs and colours, take no part in the other numbers).
``--fit-calibrator PATH`` fits the calibrator on all of this
run's errors and writes it to PATH (the shipped one was fitted this way on the tuning seed 101). ``--confirm`` runs
each diagnosis's confirming intervention; the confidence then also reads ``confirmed`` (and ``--fit-calibrator``
fits that map, kept beside the plain one in PATH).
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
    ap.add_argument("--out", default=None, help="also write errors.csv, confusion.csv and figures here")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    ap.add_argument("--organisms", default=None, help="comma-separated planted organisms (default: all)")
    ap.add_argument("--holdouts", default="shipped",
                    help="hold-out variants to report on their own: 'shipped' (those with a checkpoint), 'none', or a "
                         "comma-separated list")
    ap.add_argument("--fit-calibrator", default=None, help="fit the confidence calibrator on this run, write it here")
    ap.add_argument("--confirm", action="store_true",
                    help="confirm each diagnosis by intervention; the confidence also reads `confirmed`")
    args = ap.parse_args()
    import pandas as pd

    from lvlm_probe.organisms.validate import planted_cause_benchmark

    t0 = time.time()
    from lvlm_probe.organisms.validate import PLANTED_STAGE

    names = args.organisms.split(",") if args.organisms else list(PLANTED_STAGE)
    if any(n not in PLANTED_STAGE for n in names):
        ap.error(f"--organisms takes planted organisms {list(PLANTED_STAGE)}, got {names}")
    from lvlm_probe.organisms import CHECKPOINTS
    from lvlm_probe.organisms.validate import HOLDOUT_STAGE

    if args.holdouts == "shipped":
        holdouts = [h for h in HOLDOUT_STAGE if (CHECKPOINTS / h / "config.json").is_file()]
    else:
        holdouts = [h for h in args.holdouts.split(",") if h and h != "none"]
    if any(h not in HOLDOUT_STAGE for h in holdouts):
        ap.error(f"--holdouts takes hold-out variants {list(HOLDOUT_STAGE)}, 'shipped' or 'none', got {holdouts}")
    r = planted_cause_benchmark(names, n=args.n, seed=args.seed, holdouts=holdouts, confirm=args.confirm)
    pd.set_option("display.width", 200)
    print("\nplanted stage (rows) x diagnosed stage (columns):")
    print(r["confusion"].to_string())
    print("\nplanted level x diagnosed level:")
    print(r["level_confusion"].to_string())
    print("\nper organism:")
    print(r["per_organism"].to_string())
    print("\nclean organism's own errors, diagnosed stage:", r["clean"].to_dict())
    if len(r["holdout"]):
        print("\nhold-out variants (never tuned on; target recall >= 0.90 each):")
        print(r["holdout"].to_string())
        print("diagnosed stages:", pd.crosstab(r["holdout_errors"].organism, r["holdout_errors"].stage).to_dict("index"))
    print(f"\nbalanced accuracy (stage): {r['balanced_accuracy']:.3f}   target >= 0.90, goal 0.95")
    print(f"balanced accuracy (level): {r['level_balanced_accuracy']:.3f}")
    print("\nconfidence, leave one organism out (bins of 0.1):")
    print(r["reliability"].round(3).to_string(index=False))
    print(f"expected calibration error: {r['ece']:.3f}   target <= 0.05; confidence separates right from wrong "
          f"stages with AUROC {r['confidence_auroc']:.3f}")
    if args.confirm:
        from lvlm_probe.tracing.confirm import confirmation_summary

        e = r["errors"].assign(right=lambda d: d.stage == d.planted_stage)
        print("\ninterventional confirmation, by diagnosed stage:")
        print(confirmation_summary(e).round(3).to_string(index=False))
        print("right-stage share by confirmed:", e.groupby(e.confirmed.astype(str)).right.agg(["size", "mean"])
              .round(3).to_dict("index"))
    print(f"({time.time() - t0:.0f} s, n={args.n} per organism, seed {args.seed})")
    if args.fit_calibrator:
        from lvlm_probe.tracing.calibration import ConfidenceCalibrator

        e = r["errors"]
        cal = ConfidenceCalibrator(fitted_on=f"benchmarks/planted_causes.py --n {args.n} --seed {args.seed} "
                                             f"({len(e)} planted errors){', --confirm' if args.confirm else ''}")
        cal.fit(e, (e.stage == e.planted_stage).to_numpy(), confirmation=args.confirm).to_json(args.fit_calibrator)
        print(f"calibrator written to {args.fit_calibrator}: {cal}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        r["errors"].to_csv(out / "errors.csv", index=False)
        r["references"].to_csv(out / "references.csv", index=False)
        if len(r["holdout_errors"]):
            r["holdout_errors"].to_csv(out / "holdout_errors.csv", index=False)
        r["confusion"].to_csv(out / "confusion.csv")
        (out / "summary.json").write_text(json.dumps({
            "balanced_accuracy": r["balanced_accuracy"], "level_balanced_accuracy": r["level_balanced_accuracy"],
            "n": args.n, "seed": args.seed}, indent=1))
        from lvlm_probe.plotting import plot_confusion, save_figure

        save_figure(plot_confusion(r["confusion"]), out / "confusion")
        from lvlm_probe.plotting import plot_reliability

        if len(r["reliability"]):  # empty when no error has a held-out confidence (a single organism)
            save_figure(plot_reliability(r["reliability"], r["ece"]), out / "reliability")
    if args.json:
        from lvlm_probe._json import dumps_strict

        print(dumps_strict({
            "balanced_accuracy": r["balanced_accuracy"], "level_balanced_accuracy": r["level_balanced_accuracy"],
            "ece": r["ece"], "confidence_auroc": r["confidence_auroc"], "per_organism": r["per_organism"].to_dict(orient="index"),
            "reliability": r["reliability"].to_dict(orient="records"), "n": args.n, "seed": args.seed,
            "confirm": args.confirm, "holdout": r["holdout"].to_dict(orient="index")}))


if __name__ == "__main__":
    main()
