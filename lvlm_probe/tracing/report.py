"""The diagnosis report: figures and a self-contained HTML page from a :class:`DiagnosisReport`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lvlm_probe.tracing.cascade import STAGES, score_column

#: Section titles of the report, in order (the per-kind sections follow "Summary").
SECTIONS: tuple[str, ...] = ("Summary", "Object errors", "Attribute errors", "Relation errors", "Probe curves",
                             "Evidence table", "Method", "Manifest")
EVIDENCE_SHOWN = ("p_emit", "rank", "p_noimg", "pmi_img", "enc_p_true", "proj_p_true", "prior_train", "prior_lift",
                  "pos_quantile", "img_attn_ratio")


def _box(item: Any, subject: Any) -> tuple | None:
    scene = getattr(item, "scene", None)
    if scene is None or not isinstance(subject, str):
        return None
    idx = scene.find(subject)
    return tuple(scene.objects[idx[0]].box) if idx else None


def _span(row: pd.Series) -> tuple[int, int] | None:
    try:
        s, e = int(row["start"]), int(row["end"])
    except (TypeError, ValueError, KeyError):
        return None
    return (s, e) if e > s else None


def make_figures(rep: Any) -> dict[str, Any]:
    """The report's figures: ``cause_bars``, ``level_bars``, ``probe_curves`` (when there are probe curves)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from lvlm_probe.plotting import plot_cause_bars, plot_probe_curves

    figs: dict[str, Any] = {}
    d = rep.diagnoses
    if len(d):
        figs["cause_bars"] = plot_cause_bars(d, by="stage")
        figs["level_bars"] = plot_cause_bars(d, by="level")
    pc = rep.probe_curves
    if pc is not None and len(pc):
        keep = pc[pc.family.isin(["object", "attribute", "relation"])]
        # one line per concept family member that matters: attributes, relation, and the mean over classes
        att = keep[keep.family != "object"]
        obj = keep[keep.family == "object"]
        if len(obj):
            cols = ["site", "component", "layer", "depth", "selection"]
            mean = obj.groupby(cols, as_index=False)[["score", "ci_low", "ci_high", "control_score"]].mean()
            mean["concept"] = "object (mean over classes)"
            att = pd.concat([att, mean], ignore_index=True)
        if len(att):
            figs["probe_curves"] = plot_probe_curves(att, control=att.control_score.notna().any())
    return figs


def write_report(rep: Any, out: Path, *, figures: bool = True, max_examples: int = 3) -> Path:
    """Write ``report.html`` (and ``figures/``) for a :class:`~lvlm_probe.tracing.DiagnosisReport`."""
    from lvlm_probe.plotting import plot_evidence_panel, save_figure
    from lvlm_probe.report import Report

    import matplotlib.pyplot as plt

    figs = make_figures(rep) if figures else {}
    for name, fig in figs.items():
        save_figure(fig, out / "figures" / name)
    d, g = rep.diagnoses, rep.generations
    m = rep.manifest
    report = Report(f"lvlm_probe diagnosis: {m.get('model')}",
                    f"{m.get('n_items')} items, {m.get('n_errors')} misaligned outputs, each traced to a level "
                    f"(data / model / inference) and a stage by the evidence cascade.")
    s = report.section("Summary")
    if len(d):
        s.table(rep.summary(), "Errors per kind, level and stage", max_rows=60)
        if "cause_bars" in figs:
            s.figure(figs["cause_bars"], "Errors per kind, stacked by diagnosed stage")
        if "level_bars" in figs:
            s.figure(figs["level_bars"], "Errors per kind, stacked by level")
    else:
        s.text("No misaligned output was found on these items.")
    if m.get("n_failed"):
        s.table(g[g.failed.notna()][["item_id", "failed"]], "Items that could not be run")
    items = {it.id: it for it in rep.items}
    text_of = dict(zip(g.item_id, g.text))
    ev = rep.evidence.set_index("error_id") if len(rep.evidence) else None
    for kind in ("object", "attribute", "relation"):
        sec = report.section(f"{kind.capitalize()} errors")
        dk = d[d.kind == kind] if len(d) else d
        if not len(dk):
            sec.text(f"No {kind} errors.")
            continue
        sec.text(f"{len(dk)} {kind} errors; per stage: " + ", ".join(
            f"{st} {n}" for st, n in dk.stage.value_counts().items()) + ".")
        for stage, grp in dk.groupby("stage", sort=False):
            sub = sec.section(f"{kind}: {stage}")
            sub.text(f"{len(grp)} errors traced to **{stage}** (level {grp.level.iloc[0]}). Rule: {grp.rule.iloc[0]}")
            for _, row in grp.head(max_examples).iterrows():
                item = items.get(str(row.item_id))
                full = ev.loc[row.error_id] if ev is not None and row.error_id in ev.index else row
                text = text_of.get(str(row.item_id)) or ""
                span = _span(full)
                evidence = {k: full.get(k) for k in EVIDENCE_SHOWN if k in full}
                evidence.update(claimed=row.claimed, truth=row.truth, causes=row.causes)
                sub.example(item.image if item is not None else None, text, span=[span] if span else None,
                            evidence=evidence, title=f"{row.item_id}: {row.polarity} {kind} "
                                                     f"'{row.claimed}' (true: {row.truth})",
                            box=_box(item, full.get("subject")) if item is not None else None)
            if figures and item is not None:
                first = grp.iloc[0]
                full = ev.loc[first.error_id] if ev is not None and first.error_id in ev.index else first
                merged = {**dict(full), **dict(first)}
                try:
                    fig = plot_evidence_panel(merged, items[str(first.item_id)].image,
                                              text=text_of.get(str(first.item_id)) or "",
                                              box=_box(items[str(first.item_id)], merged.get("subject")))
                except Exception:  # noqa: BLE001 - a panel that cannot be drawn must not lose the report
                    fig = None
                if fig is not None:
                    stem = f"evidence_{kind}_{stage.replace(' ', '_')}"
                    save_figure(fig, out / "figures" / stem)
                    sub.figure(fig, f"Evidence panel of the first {kind} error traced to {stage}", close=True)
    sec = report.section("Probe curves")
    if "probe_curves" in figs:
        sec.figure(figs["probe_curves"], "Out-of-fold probe accuracy per site (dashed: random-label control)")
    if rep.probe_curves is not None and len(rep.probe_curves):
        cols = [c for c in ("site", "concept", "score", "control_score", "selectivity", "n") if c in rep.probe_curves]
        sec.table(rep.probe_curves[cols], "Probe scores", max_rows=80)
    else:
        sec.text("No probe curves (no scene graphs with boxes, or probing was skipped).")
    sec = report.section("Evidence table")
    if len(d):
        cols = ["item_id", "kind", "polarity", "claimed", "truth", "level", "stage", "confidence",
                *[c for c in EVIDENCE_SHOWN if c in d]]
        sec.table(d[cols], "One row per error (the full table is diagnosis.csv)", max_rows=200)
    else:
        sec.text("No errors.")
    sec = report.section("Method")
    from lvlm_probe.tracing import cascade as _c

    sec.text(_c.__doc__ or "")
    sec.json(m.get("thresholds", {}), "Thresholds")
    sec.text("Scores per stage (columns " + ", ".join(score_column(st) for st in STAGES) + ") grade each rule's "
             "evidence independently of the cascade order.")
    report.section("Manifest").json(m)
    for fig in figs.values():
        plt.close(fig)
    return report.write(out / "report.html")
