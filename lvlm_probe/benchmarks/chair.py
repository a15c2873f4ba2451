"""CHAIR (Rohrbach et al. 2018) as LVLM papers compute it: the OPERA / lmms-eval Python 3 port of LisaAnne's chair.py.

Pipeline per caption: tokenise + lemmatise (NLTK word_tokenize on the lower-cased caption, pos_tag, WordNet
lemmatiser with the tag's POS) -> merge COCO double words -> drop ``seat`` when ``toilet`` occurs -> keep words that
are synonyms of a COCO class -> map each to its class ("node word"). Duplicated mentions are kept.

Quirks reproduced: the synonym file is parsed with ``line.strip().split(', ')`` so ``scooter,  motor bike`` and
``cake,  cheesecake`` create keys with a leading space that never match; an image without ground truth has an empty
object set (every mention is hallucinated); CHAIR_i over a corpus without any mention, and recall without any
ground-truth object, would divide by zero (NaN with a warning here).

The tokeniser is injectable (``tokenize=``), so the counting runs without NLTK; the default NLTK tokeniser is an
optional extra (``pip install "lvlm-probe[nlp]"`` plus NLTK data).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import pandas as pd

from lvlm_probe.benchmarks._io import MissingDependencyError, PathLike, first_key, get_key, read_json, read_records, read_text
from lvlm_probe.errors import InputError

Tokenizer = Callable[[str], List[str]]

# Hard-coded rules of the CHAIR code for MSCOCO (facts of the original, needed to reproduce its numbers).
COCO_DOUBLE_WORDS = ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                     "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat",
                     "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear",
                     "hair drier", "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate",
                     "train track")
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")

NLTK_DATA_HINT = ("python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger averaged_perceptron_tagger_eng "
                  "wordnet")


@dataclass
class ChairVocab:
    """Synonym map and double-word rules.

    Attributes
    ----------
    inverse
        synonym -> COCO class (node word), as parsed from ``synonyms.txt``.
    double_words
        two-word phrase -> the single word it is replaced with.
    """

    inverse: Dict[str, str]
    double_words: Dict[str, str] = field(default_factory=dict)

    @property
    def objects(self) -> Set[str]:
        return set(self.inverse)


def load_synonyms(path: PathLike) -> ChairVocab:
    """Parse a CHAIR ``synonyms.txt`` (``canonical, syn1, syn2, ...`` per line) exactly as the original does."""
    text = read_text(path)
    inverse: Dict[str, str] = {}
    for line in text.splitlines():
        syns = line.strip().split(", ")
        for s in syns:
            inverse[s] = syns[0]
    if len(inverse) <= 1:
        raise InputError(f"{path}: no synonyms found (expected lines like 'person, girl, boy, ...')")
    dw = {w: w for w in COCO_DOUBLE_WORDS}
    for a in ANIMAL_WORDS:
        dw[f"baby {a}"] = a
        dw[f"adult {a}"] = a
    for v in VEHICLE_WORDS:
        dw[f"passenger {v}"] = v
    dw["bow tie"] = "tie"
    dw["toilet seat"] = "toilet"
    dw["wine glas"] = "wine glass"
    return ChairVocab(inverse=inverse, double_words=dw)


def nltk_tokenizer() -> Tokenizer:
    """OPERA's tokenisation: ``word_tokenize(caption.lower())``, ``pos_tag``, WordNet lemmatiser with the tag's POS."""
    try:
        import nltk
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer
    except ImportError:
        raise MissingDependencyError(f"CHAIR's default tokeniser needs NLTK: pip install \"lvlm-probe[nlp]\" then "
                                     f"{NLTK_DATA_HINT}") from None
    wnl = WordNetLemmatizer()

    def pos(tag: str) -> str:
        if tag.startswith("J"):
            return wordnet.ADJ
        if tag.startswith("V"):
            return wordnet.VERB
        if tag.startswith("R"):
            return wordnet.ADV
        return wordnet.NOUN

    def tokenize(caption: str) -> List[str]:
        try:
            words = nltk.word_tokenize(caption.lower())
            return [wnl.lemmatize(w, pos=pos(t)) for w, t in nltk.pos_tag(words)]
        except LookupError as exc:
            raise MissingDependencyError(f"CHAIR's default tokeniser needs NLTK data: {NLTK_DATA_HINT} "
                                         f"({str(exc).strip().splitlines()[0]})") from None
    return tokenize


def caption_to_words(caption: str, vocab: ChairVocab, tokenize: Tokenizer) -> Tuple[List[str], List[str], List[str]]:
    """COCO mentions of one caption.

    Returns
    -------
    words, node_words, merged
        Matched words (after lemmatisation and merging, duplicates kept), their COCO classes, and the merged token
        list (its length is what CHAIR's ``Len`` averages).
    """
    lemmas = tokenize(caption)
    merged: List[str] = []
    i = 0
    while i < len(lemmas):
        pair = " ".join(lemmas[i:i + 2])
        if pair in vocab.double_words:
            merged.append(vocab.double_words[pair])
            i += 2
        else:
            merged.append(lemmas[i])
            i += 1
    words = merged
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    words = [w for w in words if w in vocab.inverse]
    return words, [vocab.inverse[w] for w in words], merged


def ground_truth_from_coco(vocab: ChairVocab, tokenize: Tokenizer, instances: Sequence[PathLike] = (),
                           captions: Sequence[PathLike] = ()) -> Dict[int, Set[str]]:
    """Ground-truth COCO classes per image: instance annotations plus the classes mentioned in the GT captions."""
    gt: Dict[int, Set[str]] = {}
    for path in instances:
        d = read_json(path)
        for k in ("categories", "annotations"):
            if not isinstance(d, dict) or k not in d:
                raise InputError(f"{path}: missing key '{k}' (expected a COCO instances_*.json)")
        names = {c["id"]: c["name"] for c in d["categories"]}
        for a in d["annotations"]:
            name = names[a["category_id"]]
            gt.setdefault(a["image_id"], set()).add(vocab.inverse.get(name, name))
    for path in captions:
        d = read_json(path)
        if not isinstance(d, dict) or "annotations" not in d:
            raise InputError(f"{path}: missing key 'annotations' (expected a COCO captions_*.json)")
        for a in d["annotations"]:
            gt.setdefault(a["image_id"], set()).update(caption_to_words(a["caption"], vocab, tokenize)[1])
    return gt


def load_ground_truth(path: PathLike, vocab: Optional[ChairVocab] = None) -> Dict[Union[int, str], Set[str]]:
    """Ground truth from a simple file: a JSON object ``{image_id: [objects]}`` or records with ``image_id`` and
    ``objects`` / ``gt_objects`` / ``gt_object`` (lmms-eval). Object names are mapped to COCO classes when known."""
    inv = vocab.inverse if vocab else {}
    text = read_text(path).lstrip()
    gt: Dict[Union[int, str], Set[str]] = {}
    recs = read_records(path)
    record_keys = {"image_id", "objects", "gt_objects", "gt_object"}
    if text.startswith("{") and len(recs) == 1 and isinstance(recs[0][1], dict) and not record_keys & set(recs[0][1]):
        for k, v in recs[0][1].items():
            if not isinstance(v, list) or not all(isinstance(o, str) for o in v):
                raise InputError(f"{path}: value of image {k!r} should be a list of object names (strings), "
                                 f"found {v!r}"[:300])
            key: Union[int, str] = int(k) if str(k).isdigit() else k
            gt[key] = {inv.get(o, o) for o in v}
        return gt
    for line, obj in recs:
        iid = get_key(path, line, obj, "image_id", (int, str))
        key, objs = first_key(path, line, obj, ("objects", "gt_objects", "gt_object"), list)
        if not all(isinstance(o, str) for o in objs):
            raise InputError(f"{path}: line {line}: key '{key}' should be a list of object names (strings), "
                             f"found {objs!r}"[:300])
        gt.setdefault(iid, set()).update(inv.get(o, o) for o in objs)
    return gt


def load_captions(path: PathLike, image_id_key: str = "image_id",
                  caption_key: str = "caption") -> List[Tuple[Union[int, str], str]]:
    """Generated captions (JSON list or JSON lines; OPERA's ``{"image_id", "caption"}``) as ``(image_id, caption)``."""
    out = []
    for line, obj in read_records(path):
        out.append((get_key(path, line, obj, image_id_key, (int, str)), get_key(path, line, obj, caption_key, str)))
    return out


def chair(captions: Iterable[Tuple[Union[int, str], str]], ground_truth: Mapping[Union[int, str], Iterable[str]],
          vocab: ChairVocab, tokenize: Optional[Tokenizer] = None) -> pd.DataFrame:
    """Per-caption CHAIR records.

    Parameters
    ----------
    captions
        ``(image_id, caption)`` pairs (see :func:`load_captions`).
    ground_truth
        image id -> COCO classes (node words). A missing image has no objects, as in the original.
    vocab
        From :func:`load_synonyms`.
    tokenize
        ``caption -> lemmas``; default :func:`nltk_tokenizer` (needs the ``nlp`` extra and NLTK data).

    Returns
    -------
    pandas.DataFrame
        ``image_id, caption, n_words, mentions, hallucinated, n_gt, n_recalled, chair_s, chair_i, recall`` per caption;
        aggregate with :func:`chair_summary`.
    """
    tok = tokenize or nltk_tokenizer()
    rows = []
    for iid, cap in captions:
        words, nodes, merged = caption_to_words(cap, vocab, tok)
        gt = set(ground_truth.get(iid, ()))
        hall = [n for n in nodes if n not in gt]
        recalled = {n for n in nodes if n in gt}
        rows.append({"image_id": iid, "caption": cap, "n_words": len(merged), "mentions": nodes, "hallucinated": hall,
                     "n_gt": len(gt), "n_recalled": len(recalled), "chair_s": int(bool(hall)),
                     "chair_i": len(hall) / len(words) if words else 0.0,
                     "recall": len(recalled) / len(gt) if gt else 0.0})
    return pd.DataFrame(rows, columns=["image_id", "caption", "n_words", "mentions", "hallucinated", "n_gt", "n_recalled",
                                       "chair_s", "chair_i", "recall"])


def _div(num: float, den: float, what: str) -> float:
    if den == 0:
        warnings.warn(f"CHAIR: {what} has a zero denominator (the original would raise ZeroDivisionError); reporting NaN",
                      RuntimeWarning, stacklevel=3)
        return math.nan
    return num / den


def chair_summary(per_caption: pd.DataFrame) -> Dict[str, float]:
    """Corpus metrics as fractions: ``chair_s, chair_i, recall`` and ``len`` (mean merged tokens per caption; OPERA
    prints it as Len), plus the counts they come from."""
    n = len(per_caption)
    mentions = int(sum(len(m) for m in per_caption["mentions"]))
    hall = int(sum(len(h) for h in per_caption["hallucinated"]))
    return {"chair_s": _div(int(per_caption["chair_s"].sum()), n, "CHAIR_s"),
            "chair_i": _div(hall, mentions, "CHAIR_i"),
            "recall": _div(int(per_caption["n_recalled"].sum()), int(per_caption["n_gt"].sum()), "recall"),
            "len": _div(int(per_caption["n_words"].sum()), n, "Len"),
            "n_captions": n, "n_mentions": mentions, "n_hallucinated": hall}
