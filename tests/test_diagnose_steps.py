"""Diagnosis as composable, resumable steps: the steps alone, the config, the out dir, the failure policy,
the preflight, NaN as no evidence, rendering without touching the backend, and the room boundaries."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lvlm_probe as lp
from lvlm_probe.tracing import RULES, DiagnoseConfig, Run, rule_holds
from lvlm_probe.tracing.cascade import _features
from lvlm_probe.tracing.diagnose import STEPS_FILE

FAST = DiagnoseConfig(max_new_tokens=6, batch_size=4, curve_sites=None)


@pytest.fixture(scope="module")
def world_items():
    return lp.SceneWorld().items(5, "caption", seed=0)


@pytest.fixture(scope="module")
def tiny(llava_dir):
    return lp.load(str(llava_dir), device="cpu")


def _with_bad_image(items, k, tmp_path):
    bad = list(items)
    it = bad[k]
    bad[k] = lp.Item(it.id, str(tmp_path / "missing.png"), it.prompt, scene=it.scene, task=it.task)
    return bad


# ---- the steps alone --------------------------------------------------------------------------------------
def test_steps_alone_compose_to_diagnose(tiny, world_items):
    run = lp.generate_and_judge(tiny, world_items, FAST, progress=False)
    assert isinstance(run, Run) and list(run.generations.item_id) == [it.id for it in world_items]
    assert all(isinstance(t, list) for t in run.generations.tokens)
    # one column per name: the errors frame holds ERROR_COLUMNS, item_id (the id) once and b (the batch row)
    from lvlm_probe.schema import ERROR_COLUMNS
    assert len(run.errors) and len(set(ERROR_COLUMNS)) == len(ERROR_COLUMNS) and "item" not in ERROR_COLUMNS
    assert sorted(run.errors.columns) == sorted(ERROR_COLUMNS)
    assert all(e.startswith(f"{i}#") for e, i in zip(run.errors.error_id, run.errors.item_id))
    ev = lp.collect_evidence(tiny, world_items, run, FAST, training_stats=None, progress=False)
    assert len(ev.frame) == len(run.errors) and {"p_emit", "enc_p_true", "prior_train"} <= set(ev.frame.columns)
    dx = lp.cascade(ev.frame, FAST.thresholds)
    rep = lp.diagnose(tiny, world_items, FAST, training_stats=None, progress=False)
    assert rep.errors.error_id.tolist() == run.errors.error_id.tolist()
    assert rep.diagnoses.stage.tolist() == dx.stage.tolist()


def test_a_judge_can_be_replaced(tiny, world_items):
    seen = []

    def my_judge(gen, chunk):
        seen.extend(it.id for it in chunk)
        return pd.DataFrame([{"item_id": it.id, "kind": "object", "polarity": "hallucinated", "subject": "star",
                              "claimed": "star", "truth": None, "b": b, "first_token": None}
                             for b, it in enumerate(chunk)])

    run = lp.generate_and_judge(tiny, world_items, FAST, judge=my_judge, progress=False)
    assert seen == [it.id for it in world_items]
    assert len(run.errors) == len(world_items) and set(run.errors.claimed) == {"star"}
    assert run.errors.error_id.tolist() == [f"{it.id}#{k}" for k, it in enumerate(world_items)]
    assert run.errors.item_id.tolist() == [it.id for it in world_items] and "item" not in run.errors.columns
    # a judge whose frame does not name the item id is refused with the column it lacks
    with pytest.raises(lp.InputError, match="lacks an item_id column"):
        lp.generate_and_judge(tiny, world_items, FAST, judge=lambda g, c: my_judge(g, c).rename(columns={"item_id": "item"}),
                              progress=False)


def test_config_validates_and_the_cli_maps_flags_one_to_one():
    from lvlm_probe.cli import build_parser, diagnose_config

    for bad in (dict(batch_size=0), dict(max_new_tokens=-1), dict(n_probe_items=-2), dict(probe_sites=("a",)),
                dict(curve_sites="projector.out")):
        with pytest.raises(lp.InputError):
            DiagnoseConfig(**bad)
    with pytest.raises(lp.InputError, match="temperature"):
        lp.Decoding(do_sample=True, temperature=0)
    a = build_parser().parse_args(["diagnose", "--model", "m", "--out", "o", "--batch-size", "3", "--max-new-tokens",
                                   "7", "--probe-items", "11", "--curve-sites", "projector.out", "--sampling",
                                   "--temperature", "1.5", "--top-p", "0.9", "--top-k", "5", "--seed", "9"])
    cfg = diagnose_config(a)
    assert cfg == DiagnoseConfig(batch_size=3, max_new_tokens=7, n_probe_items=11, curve_sites=("projector.out",),
                                 decoding=lp.Decoding(True, 1.5, 0.9, 5), seed=9)
    d = diagnose_config(build_parser().parse_args(["diagnose", "--model", "m", "--out", "o"]))
    assert d == DiagnoseConfig() and d.decoding is None  # None: the model's run defaults decide
    assert diagnose_config(build_parser().parse_args(["diagnose", "--model", "m", "--out", "o", "--curve-sites",
                                                      "none"])).curve_sites is None


def test_organism_run_defaults_travel_with_the_checkpoint():
    from lvlm_probe.organisms import CHECKPOINTS, ZOO, run_defaults

    for name, spec in ZOO.items():
        if spec.checkpoint == name and (CHECKPOINTS / name / "config.json").is_file():
            shipped = json.loads((CHECKPOINTS / name / "run_defaults.json").read_text())
            assert shipped == run_defaults(name), name
    m = lp.load("organism:sampling", device="cpu")
    assert m.run_defaults["decoding"]["do_sample"] is True and m.run_defaults["probe_world"]["grid"] == 4
    assert DiagnoseConfig().resolve(m).generate_kwargs()["do_sample"] is True
    assert lp.load(str(CHECKPOINTS / "clean"), device="cpu").run_defaults["decoding"] == {}


# ---- resumable out dir ------------------------------------------------------------------------------------
def test_rerun_resumes_and_a_changed_setting_recomputes_downstream_only(tiny, world_items, tmp_path, monkeypatch):
    out = tmp_path / "run"
    lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    steps = json.loads((out / STEPS_FILE).read_text())["steps"]
    assert {"run", "evidence", "diagnoses"} <= set(steps)
    calls = {"generate": 0, "forward": 0}
    real_gen, real_fwd = type(tiny).generate, type(tiny).forward

    def counting(name, fn):
        def wrapped(self, *a, **k):
            calls[name] += 1
            return fn(self, *a, **k)
        return wrapped

    monkeypatch.setattr(type(tiny), "generate", counting("generate", real_gen))
    monkeypatch.setattr(type(tiny), "forward", counting("forward", real_fwd))
    rep = lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    assert calls == {"generate": 0, "forward": 0}
    assert set(rep.manifest["timings"].values()) == {"resumed"}
    # new thresholds: only the cascade runs again
    strict = DiagnoseConfig(max_new_tokens=6, batch_size=4, curve_sites=None,
                            thresholds=lp.Thresholds(probe_threshold=0.3))
    rep2 = lp.diagnose(tiny, world_items, strict, out=out, training_stats=None, progress=False)
    t = rep2.manifest["timings"]
    assert t["run"] == "resumed" and t["evidence"] == "resumed" and t["diagnoses"] != "resumed"
    assert calls == {"generate": 0, "forward": 0}
    # a killed run (evidence never written) resumes after generation without regenerating
    (out / "evidence.csv").unlink()
    lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    assert calls["generate"] == 0 and calls["forward"] > 0
    # reading the run dir back gives the same tables
    back = lp.DiagnosisReport.read(out)
    assert back.diagnoses.error_id.tolist() == rep.diagnoses.error_id.tolist()
    assert back.generations.tokens.tolist() == rep.generations.tokens.tolist()


def test_a_finished_rerun_takes_under_a_third_of_the_first(tiny, world_items, tmp_path):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    assert time.perf_counter() - t0 < first / 3


def test_stale_files_go_and_foreign_dirs_are_refused(tiny, world_items, tmp_path):
    out = tmp_path / "run"
    rep = lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    lp.render_diagnosis(rep, out)
    (out / "figures" / "evidence_object_old_stage.png").write_bytes(b"stale")
    rep = lp.diagnose(tiny, world_items, FAST, out=out, training_stats=None, progress=False)
    assert not (out / "report.html").exists() and not (out / "figures" / "evidence_object_old_stage.png").exists()
    lp.render_diagnosis(rep, out)
    (out / "figures" / "stale.png").write_bytes(b"stale")
    lp.render_diagnosis(rep, out)
    assert not (out / "figures" / "stale.png").exists() and (out / "report.html").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(lp.InputError, match="not a diagnosis run"):
            lp.diagnose(tiny, world_items, FAST, out=foreign, overwrite=overwrite, training_stats=None, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    lp.diagnose(tiny, world_items, FAST, out=out, overwrite=True, training_stats=None, progress=False)
    assert not (out / "figures").exists()


# ---- one failure policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [2, 8])
def test_one_bad_image_fails_only_that_item(tiny, world_items, tmp_path, batch_size):
    items = _with_bad_image(world_items, 1, tmp_path)
    cfg = DiagnoseConfig(max_new_tokens=6, batch_size=batch_size, curve_sites=None)
    rep = lp.diagnose(tiny, items, cfg, training_stats=None, progress=False)
    assert list(rep.failed) == [items[1].id] and "does not exist" in rep.failed[items[1].id]
    good = rep.generations[rep.generations.failed.isna()]
    assert len(good) == len(items) - 1 and good.text.notna().all()
    # the good items generate exactly what they generate without the bad neighbour
    ref = lp.generate_and_judge(tiny, [it for k, it in enumerate(world_items) if k != 1],
                                DiagnoseConfig(max_new_tokens=6, batch_size=1), progress=False)
    assert good.text.tolist() == ref.generations.text.tolist()
    assert "1 failed" in repr(rep) and "1 failed" in rep._repr_html_()


def test_every_item_failing_or_a_systematic_error_raises(tiny, world_items, tmp_path, monkeypatch):
    bad = [lp.Item(it.id, str(tmp_path / f"none{k}.png"), it.prompt, scene=it.scene) for k, it in enumerate(world_items)]
    with pytest.raises(lp.InputError, match=r"every item failed \(5\)"):
        lp.generate_and_judge(tiny, bad, FAST, progress=False)

    def broken(self, *a, **k):
        raise RuntimeError("a bug in the model")

    monkeypatch.setattr(type(tiny), "generate", broken)
    with pytest.raises(RuntimeError, match="a bug in the model"):
        lp.generate_and_judge(tiny, world_items, FAST, progress=False)


def _items_file(items, tmp_path, missing: int | None = None) -> Path:
    lines = []
    for k, it in enumerate(items):
        p = tmp_path / f"{it.id}.png"
        if k != missing:
            it.image.save(p)
        lines.append(json.dumps({"id": it.id, "image": str(p), "prompt": it.prompt, "scene": it.scene.to_dict()}))
    f = tmp_path / "items.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lvlm_probe.cli", "diagnose", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_reports_failed_items_and_exit_codes(llava_dir, world_items, tmp_path):
    f = _items_file(world_items, tmp_path, missing=2)
    r = _cli("--model", str(llava_dir), "--items", str(f), "--out", str(tmp_path / "o"), "--max-new-tokens", "4",
             "--curve-sites", "none", "--batch-size", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 of 5 items diagnosed, 1 failed" in r.stdout and f"failed: {world_items[2].id}:" in r.stdout
    html = (tmp_path / "o" / "report.html").read_text()
    assert "1 of 5 items could not be run" in html
    g = tmp_path / "all_bad"
    g.mkdir()
    f = _items_file(world_items[:1], g, missing=0)
    r = _cli("--model", str(llava_dir), "--items", str(f), "--out", str(g / "o"), "--max-new-tokens", "4")
    assert r.returncode == 2 and "every item failed" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_out_fails_in_seconds_before_the_model_runs(llava_dir, world_items, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    f = _items_file(world_items[:2], tmp_path)
    t0 = time.perf_counter()
    r = _cli("--model", str(llava_dir), "--items", str(f), "--out", str(blocker / "sub"))
    assert r.returncode == 2 and "cannot be written" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 30
    with pytest.raises(lp.InputError, match="cannot be written"):
        lp.diagnose(str(llava_dir), world_items[:2], out=blocker / "sub")


# ---- NaN is no evidence -----------------------------------------------------------------------------------
FIRING = {  # for each rule (by index in RULES), evidence on which it fires
    0: dict(sampled=True, rank=3),
    1: dict(sampled=True, rank=1, deviation_step=1, step=3),
    2: dict(enc_p_true=0.3),
    3: dict(enc_p_true=0.95, proj_p_true=0.3),
    4: dict(prior_train=0.95, prior_lift=5.0, p_emit=0.5, p_noimg=0.5, p_knock=0.5),
    5: dict(pos_quantile=1.0),
    6: dict(pmi_img=0.1, img_use=0.1),
    7: dict(polarity="omitted", p_emit=np.nan, img_use=0.1),
}


def test_every_rule_fires_on_its_evidence_and_never_on_a_missing_feature():
    th = lp.Thresholds()
    base = dict(kind="attribute", polarity="hallucinated", sampled=False)
    assert len(FIRING) == len(RULES)
    for k, rule in enumerate(RULES):
        f = _features({**base, **FIRING[k]}, th)
        assert rule_holds(rule, f, th), (k, rule.stage)
        assert "nan" not in rule.text(f, th).lower(), rule.text(f, th)
        for need in rule.needs:
            g = dict(f)
            g[need] = float("nan")
            assert not rule_holds(rule, g, th), (k, rule.stage, need)


def test_an_omitted_object_is_never_explained_by_token_evidence():
    om = dict(kind="object", polarity="omitted", claimed=None, truth="ring", subject="ring", img_use=0.05)
    d = lp.tracing.diagnose_error(om)
    assert d.stage == "llm fusion" and "nan" not in d.rule and "has no token" in d.rule
    d = lp.tracing.diagnose_error({**om, "img_use": float("nan")})
    assert d.stage == "undetermined" and math.isnan(d.confidence)


# ---- rendering and the room boundaries ---------------------------------------------------------------------
def test_rendering_keeps_the_callers_matplotlib_backend(tiny, world_items, tmp_path):
    rep = lp.diagnose(tiny, world_items, FAST, training_stats=None, progress=False)
    rep.write(tmp_path / "tables")
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import lvlm_probe as lp\n"
        f"rep = lp.DiagnosisReport.read({str(tmp_path / 'tables')!r})\n"
        f"lp.render_diagnosis(rep, {str(tmp_path / 'r')!r})\n"
        "rep.write(" + repr(str(tmp_path / "t2")) + ")\n"
        "import matplotlib.pyplot as plt\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["svg", "0"]
    assert (tmp_path / "r" / "report.html").exists()


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def test_room_boundaries():
    root = Path(lp.__file__).parent
    for p in (root / "tracing").glob("*.py"):
        bad = {m for m in _imports(p) if m.startswith(("lvlm_probe.organisms", "lvlm_probe.plotting",
                                                       "lvlm_probe.report", "lvlm_probe.cli"))}
        assert not bad, f"{p.name} imports {bad}"
    for p in root.rglob("*.py"):
        assert "matplotlib.use(" not in p.read_text(encoding="utf-8"), p
    assert not _imports(root / "schema.py") - {"__future__"}


def test_one_spelling_per_stage():
    from lvlm_probe import schema
    from lvlm_probe.organisms import ZOO
    from lvlm_probe.plotting.style import STAGE_COLORS, STAGES as PLOT_STAGES

    assert set(PLOT_STAGES) == set(schema.STAGES) | {schema.UNDETERMINED} == set(STAGE_COLORS)
    assert set(schema.LEVEL_OF) == set(PLOT_STAGES)
    for spec in ZOO.values():
        assert spec.component in schema.STAGES or spec.component == "none", spec.name
