"""Do the self-calibrated features keep their meaning across model sizes?

For one organism, diagnoses its planted errors with the shipped checkpoint and with other checkpoints of the same
organism (e.g. trained at another width with the same recipe), and prints per model: the scale of its image use
(``ref_pmi``: median ``|pmi_img|`` of its correct claims; the median ``|pmi_img|`` of its planted errors), the
errors' calibrated quantile (``q_pmi``), and the planted-cause recall of the cascade reading the calibrated
features against the same cascade on the absolute features alone (no reference set).

    python benchmarks/calibration_sizes.py --organism cooccurrence --models DIR [DIR ...] [--n 40] [--seed 202]
        [--json]

``--json`` prints, as the last line, one JSON object: per model ``n_errors``, ``recall_calibrated``,
``recall_absolute``, ``ref_pmi``, ``error_abs_pmi``, ``error_q_pmi``, ``n_parameters``.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(organism: str, model: str, n: int, seed: int, clean) -> dict:
    """The planted errors of ``model`` (shipped checkpoint when ``model == 'shipped'``) and their scales."""
    import numpy as np

    import lvlm_probe as lp
    from lvlm_probe.organisms.validate import planted_errors
    from lvlm_probe.tracing import cascade
    from lvlm_probe.tracing.reference import CALIBRATED_COLUMNS

    m = lp.load(f"organism:{organism}" if model == "shipped" else model)
    d, rep = planted_errors(organism, n, seed, clean=clean, model=m)
    ev = rep.evidence.set_index("error_id").loc[d.error_id].reset_index()
    absolute = cascade(ev.drop(columns=list(CALIBRATED_COLUMNS)))
    return {
        "n_parameters": int(sum(p.numel() for p in m.hf_model.parameters())), "n_errors": int(len(d)),
        "recall_calibrated": float(np.mean(d.stage == d.planted_stage)) if len(d) else float("nan"),
        "recall_absolute": float(np.mean(absolute.stage.to_numpy() == d.planted_stage.to_numpy())) if len(d)
        else float("nan"),
        "ref_pmi": float(rep.evidence.ref_pmi.iloc[0]) if len(rep.evidence) else float("nan"),
        "error_abs_pmi": float(np.nanmedian(d.pmi_img.abs())) if len(d) else float("nan"),
        "error_q_pmi": float(np.nanmedian(d.q_pmi)) if len(d) else float("nan"),
        "stages": d.stage.value_counts().to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default="cooccurrence")
    ap.add_argument("--models", nargs="+", default=["shipped"],
                    help="checkpoint directories of the same organism ('shipped' = the zoo's)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=202)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import lvlm_probe as lp

    t0 = time.time()
    clean = lp.load("organism:clean")
    res = {m: measure(args.organism, m, args.n, args.seed, clean) for m in args.models}
    print(f"{'model':<44} {'params':>8} {'errors':>6} {'ref_pmi':>7} {'|pmi| err':>9} {'q_pmi err':>9} "
          f"{'recall cal':>10} {'recall abs':>10}")
    for m, r in res.items():
        print(f"{m[-44:]:<44} {r['n_parameters']:>8} {r['n_errors']:>6} {r['ref_pmi']:>7.2f} {r['error_abs_pmi']:>9.2f} "
              f"{r['error_q_pmi']:>9.2f} {r['recall_calibrated']:>10.3f} {r['recall_absolute']:>10.3f}")
    print(f"({time.time() - t0:.0f} s, {args.organism}, n={args.n}, seed {args.seed})")
    if args.json:
        print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
