"""AMBER (junyangwang0410/AMBER ``inference.py``): discriminative and generative scores, reproduced exactly.

Discriminative quirks reproduced: exact string match of ``"Yes"`` / ``"No"``; "No" is the positive class;
every counter starts from ``metrics.txt`` (denominators at 0.001, so each ratio is score / (count + 0.001) and the
pooled attribute denominators carry 0.003); percentages are rounded to one decimal *before* F1; F1's epsilon is
0.0001 except 0.001 for existence. Annotations are looked up by each record's ``id`` field (the original indexes
``annotations[id - 1]``, which is the same thing on the full file and wrong on a subset).

The generative scores (CHAIR, Cover, Hal, Cog) need NLTK (tokeniser, tagger, WordNet) and spaCy's
``en_core_web_lg`` vectors; both are optional (``pip install "lvlm-probe[nlp]"``). Tokenisation and similarity are
injectable, so the counting logic is usable and testable without them.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from lvlm_probe.benchmarks._io import (MissingDependencyError, PathLike, get_key, read_json, read_records, read_text,
                                      require_dict, require_records)
from lvlm_probe.errors import InputError

#: evaluation types of inference.py and the dimensions each prints.
TYPES: Dict[str, Tuple[str, ...]] = {
    "d": ("overall", "existence", "attribute", "state", "number", "action", "relation"),
    "de": ("existence",),
    "da": ("attribute", "state", "number", "action"),
    "dr": ("relation",),
    "g": ("generative",),
    "a": ("generative", "overall", "existence", "attribute", "state", "number", "action", "relation"),
}

# annotation type -> counter group (anything else counts as relation, as in the original's final `else`)
_GROUP = {"discriminative-attribute-state": "state", "discriminative-attribute-number": "number",
          "discriminative-attribute-action": "action", "discriminative-hallucination": "existence"}
_SEED_NUM = 0.001  # metrics.txt: every *_num starts at 0.001, every *_score at 0


def load_amber_annotations(path: PathLike) -> Dict[int, dict]:
    """AMBER ``annotations.json`` (full or subset) as ``{id: record}``, checking ``id``, ``type`` and ``truth``."""
    out: Dict[int, dict] = {}
    for line, obj in require_records(path, read_records(path), "annotations"):
        d = require_dict(path, line, obj)
        i = get_key(path, line, d, "id", int)
        get_key(path, line, d, "type", str)
        get_key(path, line, d, "truth", (str, list))
        if d["type"] == "generative":
            get_key(path, line, d, "hallu", list)
        elif d["truth"] not in ("yes", "no"):
            raise InputError(f"{path}: line {line}: key 'truth' of a discriminative question should be 'yes' or 'no', "
                             f"found {d['truth']!r}")
        if i in out:
            raise InputError(f"{path}: line {line}: duplicate id {i}")
        out[i] = d
    return out


def load_amber_responses(path: PathLike) -> List[Tuple[int, int, str]]:
    """Model responses ``[{"id": int, "response": str}, ...]`` as ``(line, id, response)`` tuples."""
    out = []
    seen: Dict[int, int] = {}
    for line, obj in require_records(path, read_records(path), "responses"):
        i = get_key(path, line, obj, "id", int)
        r = get_key(path, line, obj, "response", str)
        if i in seen:
            raise InputError(f"{path}: line {line}: duplicate id {i} (first at line {seen[i]})")
        seen[i] = line
        out.append((line, i, r))
    return out


def _round1(x: float) -> float:
    return round(x, 1)


def _prf(correct: float, n: float, ans_no_score: float, ans_no_num: float, no_score: float, no_num: float,
         eps: float) -> Dict[str, float]:
    acc = _round1(correct / n * 100)
    p = _round1(ans_no_score / ans_no_num * 100)
    r = _round1(no_score / no_num * 100)
    f1 = _round1(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100)
    return {"accuracy": acc, "precision": p, "recall": r, "f1": f1}


def _discriminative_counts(ann: Dict[int, dict], responses: Sequence[Tuple[int, int, str]], responses_name: str
                           ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, int], int]:
    """AMBER's discriminative counters per group (accumulated one question at a time from the 0.001 seeds, like
    the original, so the float rounding is the same), the question count per group and the number of
    generative responses skipped."""
    groups = ("overall", "state", "number", "action", "existence", "relation")
    c = {g: {"correct_num": _SEED_NUM, "correct_score": 0, "no_num": _SEED_NUM, "no_score": 0, "ans_no_num": _SEED_NUM,
             "ans_no_score": 0} for g in groups}
    count = {g: 0 for g in groups}
    n_gen = 0
    for line, i, response in responses:
        if i not in ann:
            raise InputError(f"{responses_name}: line {line}: key 'id' = {i} has no annotation")
        a = ann[i]
        if a["type"] == "generative":
            n_gen += 1
            continue
        g = _GROUP.get(a["type"], "relation")
        for key in ("overall", g):
            cc = c[key]
            count[key] += 1
            cc["correct_num"] += 1
            if a["truth"] == "yes":
                if response == "Yes":
                    cc["correct_score"] += 1
            else:
                cc["no_num"] += 1
                if response == "No":
                    cc["correct_score"] += 1
                    cc["no_score"] += 1
            if response == "No":
                cc["ans_no_num"] += 1
                if a["truth"] == "no":
                    cc["ans_no_score"] += 1
    return c, count, n_gen


def amber_discriminative(annotations: PathLike | Dict[int, dict], responses: PathLike | Sequence[Tuple[int, int, str]],
                         type: str = "d", *, responses_name: str = "responses") -> pd.DataFrame:
    """AMBER discriminative scores exactly as ``inference.py --evaluation_type`` prints them.

    Parameters
    ----------
    annotations
        Path of ``annotations.json`` (full or a subset) or the dict from :func:`load_amber_annotations`.
    responses
        Path of the response file (``[{"id", "response"}]``) or tuples from :func:`load_amber_responses`.
    type
        ``d`` (all discriminative), ``de`` (existence), ``da`` (attribute), ``dr`` (relation).

    Returns
    -------
    pandas.DataFrame
        One row per printed dimension: ``dimension, n, accuracy, precision, recall, f1`` in percent with one
        decimal, as AMBER prints them (``n`` is the number of questions, without the 0.001 seed).
    """
    if type not in ("d", "de", "da", "dr"):
        raise InputError(f"AMBER discriminative type must be d, de, da or dr, not {type!r}")
    ann = load_amber_annotations(annotations) if not isinstance(annotations, dict) else annotations
    if isinstance(responses, (str, bytes)) or hasattr(responses, "__fspath__"):
        responses_name = str(responses)
        responses = load_amber_responses(responses)
    c, count, n_gen = _discriminative_counts(ann, responses, responses_name)
    if n_gen:
        warnings.warn(f"{responses_name}: {n_gen} generative responses ignored by the discriminative scores",
                      stacklevel=2)

    def one(g: str, eps: float = 0.0001) -> Dict[str, float]:
        cc = c[g]
        return _prf(cc["correct_score"], cc["correct_num"], cc["ans_no_score"], cc["ans_no_num"], cc["no_score"],
                    cc["no_num"], eps)

    def attribute() -> Dict[str, float]:
        parts = [c[g] for g in ("state", "number", "action")]
        s = {k: parts[0][k] + parts[1][k] + parts[2][k] for k in parts[0]}
        return _prf(s["correct_score"], s["correct_num"], s["ans_no_score"], s["ans_no_num"], s["no_score"], s["no_num"],
                    0.0001)

    rows = []
    for dim in TYPES[type]:
        if dim == "attribute":
            vals, n = attribute(), count["state"] + count["number"] + count["action"]
        elif dim == "existence":
            vals, n = one("existence", 0.001), count["existence"]
        else:
            vals, n = one(dim), count[dim]
        rows.append({"dimension": dim, "n": n, **vals})
    return pd.DataFrame(rows, columns=["dimension", "n", "accuracy", "precision", "recall", "f1"])


# ------------------------------------------------------------------------------------------------ generative
def _nltk_nouns() -> Callable[[str], List[str]]:
    try:
        import nltk
        from nltk.stem import WordNetLemmatizer
    except ImportError:
        raise MissingDependencyError(
            "AMBER generative scoring needs NLTK: pip install \"lvlm-probe[nlp]\" then "
            "python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet") from None
    lem = WordNetLemmatizer()

    def nouns(text: str) -> List[str]:
        try:
            tagged = nltk.pos_tag(nltk.word_tokenize(text))
            return [lem.lemmatize(w) for w, pos in tagged if pos.startswith("NN")]
        except LookupError as exc:
            raise MissingDependencyError(
                "AMBER generative scoring needs NLTK data: python -m nltk.downloader punkt punkt_tab "
                f"averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet ({str(exc).strip().splitlines()[0]})") from None
    return nouns


def _spacy_similarity(model: str = "en_core_web_lg") -> Callable[[str, str], float]:
    try:
        import spacy
    except ImportError:
        raise MissingDependencyError(f"AMBER generative scoring needs spaCy and {model}: pip install \"lvlm-probe[nlp]\" "
                                     f"then python -m spacy download {model}") from None
    try:
        nlp = spacy.load(model)
    except OSError:
        raise MissingDependencyError(f"spaCy model {model} is not installed: python -m spacy download {model}") from None
    docs: Dict[str, object] = {}
    cache: Dict[Tuple[str, str], float] = {}

    def sim(a: str, b: str) -> float:
        if (a, b) not in cache:
            for w in (a, b):
                if w not in docs:
                    docs[w] = nlp(w)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # as the original: words without vectors warn
                cache[(a, b)] = float(docs[a].similarity(docs[b]))  # type: ignore[attr-defined]
        return cache[(a, b)]
    return sim


def load_association(path: PathLike) -> Dict[str, List[str]]:
    """AMBER ``relation.json``: object -> associated / near-synonym words."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a JSON object (word -> list of words)")
    return d


def load_safe_words(path: PathLike) -> List[str]:
    """AMBER ``safe_words.txt``: one word per line (the part before each newline)."""
    return [line.split("\n")[0] for line in read_text(path).splitlines(True)]


def _owned_words(objects: List[str], assoc: Dict[str, List[str]], i: int) -> Tuple[List[str], List[int]]:
    """AMBER's word list of annotation ``i``'s objects: the associations of each object (in object order), then the
    objects themselves, with the index of the object each word belongs to (a match on an association marks its
    object)."""
    words: List[str] = []
    owner: List[int] = []
    for k, w in enumerate(objects):
        if w not in assoc:
            raise InputError(f"annotation id {i}: object {w!r} is not a key of the association file (relation.json)")
        words += assoc[w]
        owner += [k] * len(assoc[w])
    return words + list(objects), owner + list(range(len(objects)))


def _mark_similar(noun: str, words: List[str], owner: List[int], marks: List[int],
                  sim: Callable[[str, str], float], threshold: float) -> bool:
    """Mark the object of the first word more similar to ``noun`` than ``threshold``; whether one was found."""
    for j, w in enumerate(words):
        if sim(noun, w) > threshold:
            marks[owner[j]] = 1
            return True
    return False


def amber_generative(annotations: PathLike | Dict[int, dict], responses: PathLike | Sequence[Tuple[int, int, str]],
                     association: PathLike | Dict[str, List[str]], safe_words: PathLike | Sequence[str], *,
                     extract_nouns: Optional[Callable[[str], List[str]]] = None,
                     similarity: Optional[Callable[[str, str], float]] = None, threshold: float = 0.8) -> pd.DataFrame:
    """Per-response AMBER generative counts, reproducing ``inference.py``'s matching rules.

    Parameters
    ----------
    annotations, responses
        As in :func:`amber_discriminative`; only ``generative`` items are scored.
    association, safe_words
        ``relation.json`` and ``safe_words.txt`` (paths or loaded).
    extract_nouns
        ``text -> nouns`` (default: NLTK word_tokenize + pos_tag, NN* tags, WordNet lemmatiser).
    similarity
        ``(word, word) -> float`` (default: spaCy ``en_core_web_lg`` document similarity).
    threshold
        A similarity above it counts as a match (0.8 in AMBER).

    Returns
    -------
    pandas.DataFrame
        One row per generative response: ``id, n_nouns, n_hallucinated, n_truth, n_covered, n_hallu, n_hallu_covered,
        hallucinated`` (list of hallucinated nouns). Aggregate with :func:`amber_generative_summary`.
    """
    ann = load_amber_annotations(annotations) if not isinstance(annotations, dict) else annotations
    responses_name = "responses"
    if isinstance(responses, (str, bytes)) or hasattr(responses, "__fspath__"):
        responses_name = str(responses)
        responses = load_amber_responses(responses)
    assoc = load_association(association) if not isinstance(association, dict) else association
    safe = load_safe_words(safe_words) if isinstance(safe_words, (str, bytes)) or hasattr(safe_words, "__fspath__") \
        else list(safe_words)
    vocab = set(assoc)
    for v in assoc.values():
        vocab.update(v)
    nouns_of = extract_nouns or _nltk_nouns()
    sim = similarity or _spacy_similarity()

    rows = []
    for line, i, response in responses:
        if i not in ann:
            raise InputError(f"{responses_name}: line {line}: key 'id' = {i} has no annotation")
        a = ann[i]
        if a["type"] != "generative":
            continue
        truth, hallu = list(a["truth"]), list(a["hallu"])
        t_words, t_owner = _owned_words(truth, assoc, i)
        h_words, h_owner = _owned_words(hallu, assoc, i)
        covered = [0] * len(truth)
        h_covered = [0] * len(hallu)
        nouns = [n for n in nouns_of(response) if n in vocab]
        hallucinated: List[str] = []
        for noun in nouns:
            if noun in safe:
                continue
            if noun in t_words:
                covered[t_owner[t_words.index(noun)]] = 1
                continue
            if noun in h_words:
                h_covered[h_owner[h_words.index(noun)]] = 1
            _mark_similar(noun, h_words, h_owner, h_covered, sim, threshold)
            if not _mark_similar(noun, t_words, t_owner, covered, sim, threshold):
                hallucinated.append(noun)
        rows.append({"id": i, "n_nouns": len(nouns), "n_hallucinated": len(hallucinated), "n_truth": len(truth),
                     "n_covered": sum(covered), "n_hallu": len(hallu), "n_hallu_covered": sum(h_covered),
                     "hallucinated": hallucinated})
    return pd.DataFrame(rows, columns=["id", "n_nouns", "n_hallucinated", "n_truth", "n_covered", "n_hallu",
                                       "n_hallu_covered", "hallucinated"])


def amber_generative_summary(per_response: pd.DataFrame) -> Dict[str, float]:
    """CHAIR, Cover, Hal, Cog in percent with one decimal, from the 0.001-seeded sums as AMBER computes them."""
    chair_num = cover_num = cog_num = hal_num = _SEED_NUM
    chair_score = cover_score = cog_score = non_hallu = 0
    for r in per_response.itertuples(index=False):
        chair_score += r.n_hallucinated
        chair_num += r.n_nouns
        cover_score += r.n_covered
        cover_num += r.n_truth
        cog_score += r.n_hallu_covered
        cog_num += r.n_hallu
        non_hallu += r.n_hallucinated == 0
        hal_num += 1
    return {"CHAIR": _round1(chair_score / chair_num * 100), "Cover": _round1(cover_score / cover_num * 100),
            "Hal": _round1(100 - non_hallu / hal_num * 100), "Cog": _round1(cog_score / cog_num * 100)}


def amber_score(chair: float, f1: float) -> float:
    """AMBER Score = (100 - CHAIR + F1_discriminative) / 2."""
    return (100 - chair + f1) / 2
