"""The JSON contracts that scripts outside the project read: each benchmark's last line with ``--json``, at a
small size (two organisms, a few items)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def last_json(script: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"], capture_output=True,
                       text=True, timeout=900, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    def refuse(name: str):
        raise AssertionError(f"{script} printed {name}, which strict JSON readers refuse")

    return json.loads(r.stdout.strip().splitlines()[-1], parse_constant=refuse)


def test_planted_causes_contract():
    out = last_json("planted_causes.py", "--n", "8", "--seed", "3", "--organisms", "cooccurrence,sampling")
    assert {"balanced_accuracy", "level_balanced_accuracy", "ece", "per_organism"} <= set(out)
    assert 0 <= out["balanced_accuracy"] <= 1 and 0 <= out["ece"] <= 1
    assert set(out["per_organism"]) == {"cooccurrence", "sampling"}


def test_detection_contract():
    # two organisms that err (recipe v2's clean makes no error on 10 items, and a detector needs both labels)
    out = last_json("detection.py", "--n", "10", "--seed", "3", "--organisms", "attribute_prior,cooccurrence")
    assert {"auroc", "baseline_auroc", "per_kind", "held_out"} <= set(out)
    assert set(out["baseline_auroc"]) >= {"p_emit", "entropy", "internal_confidence"}
    assert out["held_out"] == ["attribute_prior", "cooccurrence"] and 0 <= out["auroc"] <= 1


def test_cause_interventions_contract():
    out = last_json("cause_interventions.py", "--n", "8", "--seed", "3", "--causes", "sampling,cooccurrence")
    assert {"matrix", "intended", "controls"} <= set(out)
    assert set(out["matrix"]) == {"sampling", "cooccurrence"}
    assert out["intended"]["sampling"] == "greedy"
    assert all(0 <= v <= 1 for row in out["matrix"].values() for v in row.values())


def test_competence_contract():
    out = last_json("competence.py", "--n", "20", "--seed", "3", "--organisms", "cooccurrence,attribute_prior")
    assert set(out["off_factor_within"]) == {"cooccurrence", "attribute_prior"}
    rows = out["table"]
    assert {r["organism"] for r in rows} == {"clean", "cooccurrence", "attribute_prior"}
    clean = {r["task"]: r for r in rows if r["organism"] == "clean"}
    assert all(r["delta"] == 0 and not r["factor"] for r in clean.values())
    assert {r["task"] for r in rows if r["organism"] == "attribute_prior" and r["factor"]} == \
        {"caption_objects", "caption_exact", "attribute_color"}
    for r in rows:
        assert r["delta"] == pytest.approx(r["accuracy"] - clean[r["task"]]["accuracy"])
        assert r["n_items"] == (4 if r["task"] != "exists" else 6)  # n // 5 per family; POPE: 6 per scene
