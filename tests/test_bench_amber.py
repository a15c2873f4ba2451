"""AMBER discriminative (exact inference.py arithmetic) and generative counting (injected tokeniser/similarity)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lvlm_probe.benchmarks.amber import (amber_discriminative, amber_generative, amber_generative_summary, amber_score,
                                         load_amber_annotations)
from lvlm_probe.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared"
AMBER = SHARED / "bench_samples" / "amber" / "data"


@pytest.fixture(scope="module")
def ann() -> dict:
    if not AMBER.is_dir():
        pytest.skip("shared bench samples not present")
    return load_amber_annotations(AMBER / "annotations.json")


def _responses(ann: dict) -> list:
    """Deterministic hand-made responses: every 3rd question answered right, the others cycle through
    'Yes', 'No', 'yes' and 'No.' (the last two never count: AMBER matches exact strings)."""
    out = []
    for k, (i, a) in enumerate(sorted(ann.items())):
        if a["type"] == "generative":
            continue
        r = ["Yes", "No", "yes", "No."][k % 4] if k % 3 else ("Yes" if a["truth"] == "yes" else "No")
        out.append((k + 1, i, r))
    return out


def _independent(ann: dict, responses: list, types: set, eps: float) -> dict:
    """Recount with integers, then apply AMBER's formula: 0.001-seeded denominators, 1-decimal rounding before F1."""
    n = correct = no_num = no_score = ans_no = ans_no_ok = 0
    for _, i, r in responses:
        a = ann[i]
        if a["type"] not in types:
            continue
        n += 1
        correct += (a["truth"] == "yes" and r == "Yes") or (a["truth"] != "yes" and r == "No")
        no_num += a["truth"] != "yes"
        no_score += a["truth"] != "yes" and r == "No"
        ans_no += r == "No"
        ans_no_ok += r == "No" and a["truth"] == "no"
    seed = 0.001 * (3 if len(types) == 3 and "discriminative-attribute-state" in types else 1)
    acc = round(correct / (n + seed) * 100, 1)
    p = round(ans_no_ok / (ans_no + seed) * 100, 1)
    rec = round(no_score / (no_num + seed) * 100, 1)
    f1 = round(2 * (p / 100) * (rec / 100) / (p / 100 + rec / 100 + eps) * 100, 1)
    return {"accuracy": acc, "precision": p, "recall": rec, "f1": f1, "n": n}


TYPES = {
    "existence": {"discriminative-hallucination"},
    "state": {"discriminative-attribute-state"},
    "number": {"discriminative-attribute-number"},
    "action": {"discriminative-attribute-action"},
    "attribute": {"discriminative-attribute-state", "discriminative-attribute-number", "discriminative-attribute-action"},
    "relation": {"discriminative-relation", "relation"},
}
# pinned after checking against _independent (percent, one decimal, as AMBER prints them)
PINNED = {
    "overall": (108, 61.1, 97.6, 60.3, 74.5),
    "existence": (30, 53.3, 100.0, 53.3, 69.5),
    "attribute": (68, 66.2, 100.0, 64.7, 78.6),
    "state": (50, 66.0, 100.0, 64.0, 78.0),
    "number": (10, 70.0, 100.0, 60.0, 75.0),
    "action": (8, 62.5, 100.0, 75.0, 85.7),
    "relation": (10, 50.0, 75.0, 75.0, 75.0),
}


def test_discriminative_on_sample(ann: dict) -> None:
    resp = _responses(ann)
    df = amber_discriminative(ann, resp, "d").set_index("dimension")
    assert list(df.index) == ["overall", "existence", "attribute", "state", "number", "action", "relation"]
    alltypes = set().union(*TYPES.values())
    for dim, types in [("overall", alltypes), *TYPES.items()]:
        exp = _independent(ann, resp, types, 0.001 if dim == "existence" else 0.0001)
        got = df.loc[dim]
        assert (got["n"], got["accuracy"], got["precision"], got["recall"], got["f1"]) == \
            (exp["n"], exp["accuracy"], exp["precision"], exp["recall"], exp["f1"]) == PINNED[dim], dim


def test_sub_types_print_their_dimensions(ann: dict) -> None:
    resp = _responses(ann)
    assert list(amber_discriminative(ann, resp, "de")["dimension"]) == ["existence"]
    assert list(amber_discriminative(ann, resp, "da")["dimension"]) == ["attribute", "state", "number", "action"]
    dr = amber_discriminative(ann, resp, "dr").iloc[0]
    assert (dr["dimension"], dr["accuracy"], dr["f1"]) == ("relation", 50.0, 75.0)


def test_existence_f1_epsilon(ann: dict) -> None:
    # 4 existence questions (all truth "no"), two answered "No": P = 2/2.001 -> 100.0, R = 2/4.001 -> 50.0;
    # F1 with the existence epsilon 0.001 is 66.6 (with 0.0001 it would be 66.7)
    ex = [i for i, a in sorted(ann.items()) if a["type"] == "discriminative-hallucination"][:4]
    resp = [(k, i, r) for k, (i, r) in enumerate(zip(ex, ["No", "No", "Yes", "Yes"]))]
    row = amber_discriminative(ann, resp, "de").iloc[0]
    assert (row["accuracy"], row["precision"], row["recall"], row["f1"]) == (50.0, 100.0, 50.0, 66.6)


def test_lookup_by_id_on_subset_and_errors(ann: dict, tmp_path: Path) -> None:
    # id 1005 sits at index 40 of the subset file; the original's annotations[id - 1] would need the full file
    assert ann[1005]["type"] == "discriminative-attribute-state"
    p = tmp_path / "resp.json"
    p.write_text(json.dumps([{"id": 1005, "response": "Yes"}, {"id": 99999, "response": "No"}], indent=4))
    with pytest.raises(InputError, match=r"resp\.json: line 6: key 'id' = 99999 has no annotation"):
        amber_discriminative(AMBER / "annotations.json", p)
    p.write_text(json.dumps([{"id": 1005, "response": "Yes"}, {"id": 1006}], indent=4))
    with pytest.raises(InputError, match=r"resp\.json: line 6: missing key 'response'"):
        amber_discriminative(AMBER / "annotations.json", p)
    p.write_text(json.dumps([{"id": 1005, "response": "Yes"}, {"id": 1005, "response": "No"}]))
    with pytest.raises(InputError, match="duplicate id 1005"):
        amber_discriminative(AMBER / "annotations.json", p)


def _nouns(text: str) -> list:
    return re.findall(r"[a-z]+", text.lower())


def _exact(a: str, b: str) -> float:
    return 1.0 if a == b else 0.0


def test_generative_counting(ann: dict) -> None:
    # id 1: truth sky, forest, grass, person, lake, mountain, road; hallu cloud, sun, bird, dog, flower
    # nouns in the AMBER vocabulary: man (person), water (lake), sky, dog, cloud, car, camera (safe word), ground
    # ('ground' is an association of grass and of road: the first listed object, grass, is covered)
    text = "A man stands by the water under the sky with a dog and a cloud and a car and a camera and a ground"
    resp = [(1, 1, text), (2, 2, "Nothing here.")]
    per = amber_generative(ann, resp, AMBER / "relation.json", AMBER / "safe_words.txt", extract_nouns=_nouns,
                           similarity=_exact)
    r1 = per.iloc[0]
    assert (r1["n_nouns"], r1["n_hallucinated"], r1["n_covered"], r1["n_hallu_covered"]) == (8, 3, 4, 2)
    assert r1["hallucinated"] == ["dog", "cloud", "car"]
    s = amber_generative_summary(per)
    # CHAIR 3/8.001, Cover 4/17.001 (id 2 lists 10 truth objects), Hal 100 - 1/2.001, Cog 2/10.001 -- all x100, 1 decimal
    assert s == {"CHAIR": 37.5, "Cover": 23.5, "Hal": 50.0, "Cog": 20.0}
    assert amber_score(7.8, 74.7) == pytest.approx(83.45)  # README: LLaVA-1.5 -> 83.5


def test_generative_nltk_path(ann: dict) -> None:
    pytest.importorskip("nltk")
    pytest.importorskip("spacy")
    try:
        per = amber_generative(ann, [(1, 1, "A man near a lake.")], AMBER / "relation.json", AMBER / "safe_words.txt")
    except Exception as exc:  # NLTK data or spaCy model missing
        pytest.skip(f"NLP data not installed: {exc}")
    assert per.iloc[0]["n_covered"] == 2


def test_missing_nlp_dependency_message(ann: dict) -> None:
    try:
        import nltk  # noqa: F401
    except ImportError:
        from lvlm_probe.benchmarks._io import MissingDependencyError

        with pytest.raises(MissingDependencyError, match=r'pip install "lvlm-probe\[nlp\]".*nltk\.downloader'):
            amber_generative(ann, [(1, 1, "x")], AMBER / "relation.json", AMBER / "safe_words.txt", similarity=_exact)
    else:
        pytest.skip("nltk is installed")
