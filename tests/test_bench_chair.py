"""CHAIR: synonym parsing quirks and the counting, with an injected tokeniser (NLTK only when installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lvlm_probe.benchmarks.chair import (caption_to_words, chair, chair_summary, load_captions, load_ground_truth,
                                         load_synonyms)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHAIR = SHARED / "bench_samples" / "chair"


@pytest.fixture(scope="module")
def vocab():
    if not CHAIR.is_dir():
        pytest.skip("shared bench samples not present")
    return load_synonyms(CHAIR / "synonyms.txt")


def simple_tokenize(caption: str) -> list:
    """Stand-in for NLTK: lower-case, split punctuation off, strip a plural 's' from a few known words."""
    plural = {"dogs": "dog", "cats": "cat", "people": "people", "men": "man"}
    toks = caption.lower().replace(".", " .").replace(",", " ,").split()
    return [plural.get(t, t) for t in toks]


def test_synonym_quirks(vocab) -> None:
    assert len(vocab.inverse) == 403
    assert vocab.inverse["girl"] == "person" and vocab.inverse["goat"] == "sheep" and vocab.inverse["desk"] == "dining table"
    # double spaces in the file create keys with a leading space that never match
    assert " motor bike" in vocab.inverse and "motor bike" not in vocab.inverse
    assert " cheesecake" in vocab.inverse and "cheesecake" not in vocab.inverse
    assert "iPhone" in vocab.inverse  # capitalised: never matches a lower-cased caption


def test_caption_to_words_rules(vocab) -> None:
    words, nodes, merged = caption_to_words("A man riding a motor bike past a fire hydrant.", vocab, simple_tokenize)
    assert nodes == ["person", "fire hydrant"]  # 'motor bike' merged, then dropped (quirk)
    assert len(merged) == 9  # a man riding a 'motor bike' past a 'fire hydrant' .
    assert caption_to_words("A baby cat and a bow tie.", vocab, simple_tokenize)[1] == ["cat", "tie"]
    assert caption_to_words("A toilet with a seat next to a chair.", vocab, simple_tokenize)[1] == ["toilet", "chair"]
    assert caption_to_words("A toilet seat.", vocab, simple_tokenize)[1] == ["toilet"]
    assert caption_to_words("Two dogs and a dog.", vocab, simple_tokenize)[1] == ["dog", "dog"]  # duplicates kept


def test_chair_metrics_by_hand(vocab) -> None:
    caps = [(1, "A man with two dogs on a couch."),      # person, dog, couch ; gt {person, dog}: couch hallucinated
            (2, "A cat sitting on a sofa, a cat."),      # cat, couch, cat ; gt {cat, couch}: none
            (3, "A view of the sky."),                    # no mention
            (4, "A pizza.")]                               # pizza ; image 4 has no ground truth: hallucinated
    gt = {1: {"person", "dog"}, 2: {"cat", "couch", "tv"}, 3: {"bird"}}
    per = chair(caps, gt, vocab, simple_tokenize)
    assert list(per["chair_s"]) == [1, 0, 0, 1]
    assert per["chair_i"].tolist() == [1 / 3, 0.0, 0.0, 1.0]
    s = chair_summary(per)
    assert s["chair_s"] == 2 / 4
    assert s["chair_i"] == 2 / 7  # 2 hallucinated of 3 + 3 + 0 + 1 mentions
    assert s["recall"] == (2 + 2 + 0 + 0) / (2 + 3 + 1 + 0)
    assert s["len"] == (9 + 10 + 6 + 3) / 4  # merged tokens per caption, punctuation included
    with pytest.warns(RuntimeWarning, match="CHAIR_i has a zero denominator"):
        s = chair_summary(chair([(3, "The sky.")], gt, vocab, simple_tokenize))
    assert math.isnan(s["chair_i"]) and s["chair_s"] == 0


def test_opera_outputs_and_ground_truth_files(vocab, tmp_path: Path) -> None:
    caps = load_captions(CHAIR / "opera_outputs" / "llava-1.5_greedy.jsonl")
    assert len(caps) == 50 and all(isinstance(i, int) for i, _ in caps)
    first_id = caps[0][0]
    p = tmp_path / "gt.json"
    p.write_text(json.dumps({str(first_id): ["man", "dining table"]}))
    gt = load_ground_truth(p, vocab)
    assert gt == {first_id: {"person", "dining table"}}  # synonyms mapped to their class
    p.write_text(json.dumps({"image_id": 5, "gt_objects": ["kitten"]}) + "\n")
    assert load_ground_truth(p, vocab) == {5: {"cat"}}


def test_nltk_tokenizer_when_available(vocab) -> None:
    pytest.importorskip("nltk")
    from lvlm_probe.benchmarks.chair import nltk_tokenizer

    tok = nltk_tokenizer()
    try:
        nodes = caption_to_words("Two dogs are sitting on the benches.", vocab, tok)[1]
    except Exception as exc:  # NLTK data missing
        pytest.skip(f"NLTK data not installed: {exc}")
    assert nodes == ["dog", "bench"]


def test_missing_nltk_message() -> None:
    try:
        import nltk  # noqa: F401
    except ImportError:
        from lvlm_probe.benchmarks._io import MissingDependencyError
        from lvlm_probe.benchmarks.chair import nltk_tokenizer

        with pytest.raises(MissingDependencyError, match=r'pip install "lvlm-probe\[nlp\]".*nltk\.downloader punkt'):
            nltk_tokenizer()
    else:
        pytest.skip("nltk is installed")


def test_ground_truth_from_coco(vocab, tmp_path: Path) -> None:
    from lvlm_probe.benchmarks.chair import ground_truth_from_coco

    inst = tmp_path / "instances_val2014.json"
    inst.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
                                "annotations": [{"image_id": 9, "category_id": 1}, {"image_id": 9, "category_id": 3}]}))
    caps = tmp_path / "captions_val2014.json"
    caps.write_text(json.dumps({"annotations": [{"image_id": 9, "caption": "A puppy near a truck."},
                                                {"image_id": 10, "caption": "Two cats."}]}))
    gt = ground_truth_from_coco(vocab, simple_tokenize, [inst], [caps])
    assert gt == {9: {"person", "car", "dog", "truck"}, 10: {"cat"}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    from lvlm_probe.errors import InputError

    with pytest.raises(InputError, match="missing key 'categories'"):
        ground_truth_from_coco(vocab, simple_tokenize, [bad])
