"""Judging: typed misalignments of a generated text against a scene graph, with character and token spans.

:func:`judge` compares what a caption or answer claims (see :func:`~lvlm_probe.misalignment.extract_claims`) with a
:class:`~lvlm_probe.data.scene.SceneGraph` and returns one :class:`Misalignment` per error:

=========  ============  ==================================================================================
kind       polarity      when
=========  ============  ==================================================================================
object     hallucinated  an object class is claimed (or "yes" to "is there a X ?") but absent
object     omitted       a present class is never mentioned, denied ("there is no X"), or answered "no"
attribute  hallucinated  a claimed colour / size / ... differs from the mentioned object's true value
attribute  omitted       a true value is denied ("the circle is not red")
relation   hallucinated  a claimed relation does not hold (or "yes" to a false relation question)
relation   omitted       a true relation is denied (or answered "no")
=========  ============  ==================================================================================

Each error carries the character span of the words that carry it and the indices of the generated tokens that
overlap that span, which is what tracing needs to find the step where the error was emitted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.data.scene import GEOMETRIC_RELATIONS, SceneGraph
from lvlm_probe.errors import InputError
from lvlm_probe.misalignment.claims import Claim, Span, extract_claims, tokens_for_span
from lvlm_probe.misalignment.readers import attribute_value_span, yes_no_span
from lvlm_probe.misalignment.vocab import WORD_RE, Vocabulary, default_vocabulary
from lvlm_probe.schema import KINDS, MISALIGNMENT_COLUMNS, POLARITIES, QA_TASKS  # noqa: F401 - KINDS, POLARITIES re-exported

FREE_TEXT_TASKS: tuple[Any, ...] = (None, "caption")
#: Misalignment frame columns (the contract lives in lvlm_probe.schema).
FRAME_COLUMNS: list[str] = list(MISALIGNMENT_COLUMNS)


@dataclass
class Misalignment:
    """One typed error of a generated text.

    Attributes
    ----------
    kind : {"object", "attribute", "relation"}
    polarity : {"hallucinated", "omitted"}
        ``hallucinated``: claimed but false. ``omitted``: true but not claimed (never mentioned, denied, or
        answered "no").
    subject : str
        Canonical class the error is about.
    claimed : str or None
        The value the text speaks of: the class (object), the attribute value, the predicate. With
        ``negated=True`` the text denies it. None for an object that is never mentioned.
    truth : str or None
        The true value: the class when present (object), the mentioned object's value (attribute), the
        predicates that do hold between the two classes joined by ``"|"`` (relation; None when none does).
    span : (int, int) or None
        Characters of the words carrying the error (object word, attribute word, relation phrase, or the
        "yes"/"no" of a QA answer); None for never-mentioned objects.
    token_indices : list of int
        Generated-token indices overlapping ``span`` (empty without token spans, and for omissions without span).
    attribute : str, optional
        Attribute type of attribute errors.
    object : str, optional
        Object class of relation errors.
    negated : bool
        The text denied ``claimed``.
    claim_span : (int, int) or None
        Characters of the whole claim (noun phrase, or subject ... object of a relation).
    text : str or None
        ``text[span[0]:span[1]]`` of the generated text.
    item_id : str, optional
    source : {"caption", "qa", "count"}
        Judged as free text, or as the answer to a QA item.
    """

    kind: str
    polarity: str
    subject: str
    claimed: str | None
    truth: str | None
    span: Span | None
    token_indices: list[int] = field(default_factory=list)
    attribute: str | None = None
    object: str | None = None
    negated: bool = False
    claim_span: Span | None = None
    text: str | None = None
    item_id: str | None = None
    source: str = "caption"

    @property
    def first_token(self) -> int | None:
        """The first generated token of the error (where tracing looks), or None."""
        return min(self.token_indices) if self.token_indices else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Truth:
    """A scene graph seen through a vocabulary: canonical class names, attribute values and predicates.

    ``holds`` has the semantics of :meth:`SceneGraph.holds` on the canonical names (so ``"man"`` in a COCO scene
    counts as ``"person"``); it is re-stated here only because the scene's own names may be synonyms.
    """

    def __init__(self, scene: SceneGraph, vocab: Vocabulary) -> None:
        self.classes = [vocab.canonical_object(o.name) for o in scene.objects]
        self.attrs = [{vocab.attribute_names.get(a.lower(), a.lower()): vocab.canonical_value(str(v))
                       for a, v in o.attributes.items()} for o in scene.objects]
        self.rels = {(r.subject, vocab.canonical_predicate(r.predicate), r.object) for r in scene.relations}
        preds = {p for _, p, _ in self.rels}
        # Derived geometric relations are exhaustive, so a missing "left of" means false; other predicates are
        # judged only when the scene annotates that predicate at all.
        self.judgeable = preds | (set(GEOMETRIC_RELATIONS) if preds & set(GEOMETRIC_RELATIONS) else set())

    def find(self, cls: str) -> list[int]:
        return [k for k, c in enumerate(self.classes) if c == cls]

    def holds(self, subject: str, predicate: str, obj: str) -> bool | None:
        si, oi = self.find(subject), self.find(obj)
        if not si or not oi:
            return None
        return any((s, predicate, o) in self.rels for s in si for o in oi)

    def true_predicates(self, subject: str, obj: str) -> str | None:
        si, oi = set(self.find(subject)), set(self.find(obj))
        preds = sorted({p for s, p, o in self.rels if s in si and o in oi})
        return "|".join(preds) if preds else None

    def values(self, cls: str, attribute: str) -> list[str]:
        return sorted({self.attrs[k][attribute] for k in self.find(cls) if attribute in self.attrs[k]})


# ------------------------------------------------------------------------------------------------- inputs
def _text_and_spans(generation_or_text: Any, b: int) -> tuple[str, Sequence[Sequence[int]] | None]:
    g = generation_or_text
    if isinstance(g, str):
        return g, None
    if not hasattr(g, "text"):
        raise InputError(f"judge needs a str or a Generation-like object with .text and .token_spans, got "
                         f"{type(g).__name__}")
    texts = g.text
    all_spans = getattr(g, "token_spans", None)
    if isinstance(texts, str):
        return texts, all_spans or None
    if not isinstance(b, int) or not 0 <= b < len(texts):
        raise InputError(f"b={b!r} is outside the generation's {len(texts)} item(s); pass b=0..{len(texts) - 1}")
    text = texts[b]
    if not isinstance(text, str):
        raise InputError(f"generation.text[{b}] is {type(text).__name__}, not str")
    spans = all_spans[b] if all_spans is not None and b < len(all_spans) else None
    return text, spans


def _scene(scene: Any, item: Any) -> SceneGraph:
    if scene is None and item is not None:
        scene = getattr(item, "scene", None)
        if scene is None:
            raise InputError(f"item {getattr(item, 'id', '?')!r} has no scene; pass scene=SceneGraph(...)")
    if isinstance(scene, dict):
        scene = SceneGraph.from_dict(scene)
    if not isinstance(scene, SceneGraph):
        raise InputError(f"scene must be a SceneGraph (or its to_dict() form), got {type(scene).__name__}; build one "
                         "with SceneGraph([SceneObject('circle', {'color': 'red'}), ...])")
    return scene


def _vocab(vocabulary: Any) -> Vocabulary:
    if vocabulary is None:
        return default_vocabulary()
    if not isinstance(vocabulary, Vocabulary):
        raise InputError(f"vocabulary must be a Vocabulary (e.g. Vocabulary.synthetic()), got "
                         f"{type(vocabulary).__name__}")
    return vocabulary


# ------------------------------------------------------------------------------------------------- free text
def _judge_claims(claims: list[Claim], truth: _Truth, omissions: bool) -> list[Misalignment]:
    out: list[tuple[int, Misalignment]] = []
    mentioned: set[str] = set()
    denied: set[str] = set()

    def add(c: Claim, kind: str, polarity: str, claimed: str, true: str | None) -> None:
        out.append((c.span[0], Misalignment(kind, polarity, c.subject, claimed, true, c.span, list(c.token_indices),
                                            attribute=c.attribute, object=c.object, negated=c.negated,
                                            claim_span=c.claim_span, text=c.text)))

    # the scene object each mention refers to: the one of its class matching most of its claimed attributes
    by_mention: dict[int, list[Claim]] = {}
    for c in claims:
        if c.kind == "attribute" and not c.negated:
            by_mention.setdefault(c.mention, []).append(c)
    referent: dict[int, int] = {}
    for m, cs in by_mention.items():
        cands = truth.find(cs[0].subject)
        if cands:
            referent[m] = max(cands, key=lambda k: (sum(truth.attrs[k].get(c.attribute) == c.value for c in cs), -k))

    for c in claims:
        present = bool(truth.find(c.subject))
        if c.kind == "object":
            if not c.negated:
                mentioned.add(c.subject)
                if not present:
                    add(c, "object", "hallucinated", c.subject, None)
            elif present:
                denied.add(c.subject)
                add(c, "object", "omitted", c.subject, c.subject)
        elif c.kind == "attribute":
            if not present:
                continue  # no ground truth; a positive mention is already an object hallucination
            if not c.negated:
                true = truth.attrs[referent[c.mention]].get(c.attribute)
                if true is not None and true != c.value:
                    add(c, "attribute", "hallucinated", c.value, true)
            elif c.value in truth.values(c.subject, c.attribute):
                denied.add(c.subject)
                add(c, "attribute", "omitted", c.value, c.value)
        else:
            if c.value not in truth.judgeable:
                continue
            holds = truth.holds(c.subject, c.value, c.object or "")
            if holds is None:
                continue  # a class is absent: reported as an object hallucination
            if not c.negated and not holds:
                add(c, "relation", "hallucinated", c.value, truth.true_predicates(c.subject, c.object or ""))
            elif c.negated and holds:
                add(c, "relation", "omitted", c.value, c.value)
    out.sort(key=lambda t: t[0])
    result = [m for _, m in out]
    if omissions:
        for cls in dict.fromkeys(truth.classes):
            if cls not in mentioned and cls not in denied:
                result.append(Misalignment("object", "omitted", cls, None, cls, None))
    return result


# ------------------------------------------------------------------------------------------------- counts
#: Words before a noun phrase that introduce new instances, and how many.
COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "another": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                               "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def _introduced(text: str, claim: Claim) -> tuple[int, bool]:
    """How many new instances a mention introduces, by its determiner ("a" / "another": 1, "two": 2, a digit;
    0 for a mention that refers back, "the circle", or has no determiner), and whether it is an explicit count."""
    words = [m.group().lower() for m in WORD_RE.finditer(text[:claim.claim_span[0]])]
    if not words:
        return 0, False
    w = words[-1]
    if w.isdigit():
        return int(w), True
    return COUNT_WORDS.get(w, 0), w not in ("a", "an", "another")


def _judge_counts(text: str, claims: list[Claim], truth: _Truth) -> list[Misalignment]:
    """Instances beyond the scene's count: "a triangle and a triangle" for one triangle, "two circles" for one,
    is an object hallucination of an extra instance (``source="count"``, truth: the scene's count). Classes absent
    from the scene are already hallucinated objects and are not counted again; a count word below the scene's count
    ("one circle" for two) is an omitted instance."""
    out: list[Misalignment] = []
    seen: dict[str, int] = {}
    for c in claims:
        if c.kind != "object" or c.negated:
            continue
        n_true = len(truth.find(c.subject))
        k, explicit = _introduced(text, c)
        if not n_true or not k:
            continue
        before = seen.get(c.subject, 0)
        seen[c.subject] = before + k
        words = text[c.claim_span[0]:c.claim_span[1]]
        if before + k > n_true:
            out.append(Misalignment("object", "hallucinated", c.subject, c.subject, f"{n_true} in the scene", c.span,
                                    list(c.token_indices), claim_span=c.claim_span, text=words, source="count"))
        elif explicit and before == 0 and k < n_true:
            out.append(Misalignment("object", "omitted", c.subject, c.subject, f"{n_true} in the scene", c.span,
                                    list(c.token_indices), claim_span=c.claim_span, text=words, source="count"))
    return out


# ------------------------------------------------------------------------------------------------- QA
_PROMPT_ATTR = re.compile(r"\b(colou?r|size|material)\b", re.IGNORECASE)


def _meta_or_prompt(item: Any, vocab: Vocabulary) -> dict[str, str]:
    """Target / attribute / subject, predicate, object of a QA item: from ``item.meta``, else read from its prompt."""
    meta = dict(getattr(item, "meta", None) or {})
    prompt = getattr(item, "prompt", "") or ""
    claims = extract_claims(prompt, vocab) if isinstance(prompt, str) else []
    task = item.task
    if task in ("exists", "attribute") and not meta.get("target"):
        obj = next((c for c in claims if c.kind == "object"), None)
        if obj is not None:
            meta["target"] = obj.subject
    if task == "attribute" and not meta.get("attribute"):
        m = _PROMPT_ATTR.search(prompt) if isinstance(prompt, str) else None
        if m:
            meta["attribute"] = vocab.attribute_names.get(m.group(1).lower(), m.group(1).lower())
    if task == "relation" and not all(meta.get(k) for k in ("subject", "predicate", "object")):
        rel = next((c for c in claims if c.kind == "relation"), None)
        if rel is not None:
            meta.update(subject=rel.subject, predicate=rel.value, object=rel.object or "")
    need = {"exists": ("target",), "attribute": ("target", "attribute"),
            "relation": ("subject", "predicate", "object")}[task]
    missing = [k for k in need if not meta.get(k)]
    if missing:
        raise InputError(f"item {getattr(item, 'id', '?')!r} ({task}): meta lacks {missing} and the prompt "
                         f"{prompt!r} does not name them; give item.meta[{missing[0]!r}]")
    return meta


def _judge_qa(text: str, token_spans: Any, item: Any, truth: _Truth, vocab: Vocabulary) -> list[Misalignment]:
    task = item.task
    meta = _meta_or_prompt(item, vocab)
    iid = getattr(item, "id", None)

    def make(kind: str, polarity: str, subject: str, claimed: str, true: str | None, span: Span, **kw: Any
             ) -> Misalignment:
        return Misalignment(kind, polarity, subject, claimed, true, span, tokens_for_span(span, token_spans),
                            claim_span=span, text=text[span[0]:span[1]], item_id=iid, source="qa", **kw)

    if task == "exists":
        target = vocab.canonical_object(str(meta["target"]))
        ans = yes_no_span(text)
        if ans is None:
            return []
        present = bool(truth.find(target))
        if ans[0] == "yes" and not present:
            return [make("object", "hallucinated", target, target, None, ans[1])]
        if ans[0] == "no" and present:
            return [make("object", "omitted", target, target, target, ans[1], negated=True)]
        return []
    if task == "attribute":
        target = vocab.canonical_object(str(meta["target"]))
        att = vocab.attribute_names.get(str(meta["attribute"]).lower(), str(meta["attribute"]).lower())
        values = truth.values(target, att)
        if not values:
            return []  # class absent or attribute not annotated: no ground truth
        said = attribute_value_span(text, att, vocab)
        if said is None or said[0] in values:
            return []
        return [make("attribute", "hallucinated", target, said[0], "|".join(values), said[1], attribute=att)]
    # relation
    s, o = vocab.canonical_object(str(meta["subject"])), vocab.canonical_object(str(meta["object"]))
    p = vocab.canonical_predicate(str(meta["predicate"]))
    ans = yes_no_span(text)
    holds = truth.holds(s, p, o)
    if ans is None or holds is None:
        return []
    if ans[0] == "yes" and not holds:
        return [make("relation", "hallucinated", s, p, truth.true_predicates(s, o), ans[1], object=o)]
    if ans[0] == "no" and holds:
        return [make("relation", "omitted", s, p, p, ans[1], object=o, negated=True)]
    return []


def answers_question(text: str, item: Any, vocabulary: Vocabulary | None = None) -> bool:
    """Does ``text`` give a readable answer to ``item``'s question?

    Yes/no tasks (``exists``, ``relation``): a "yes" or "no" can be read; ``attribute``: a value of the asked
    attribute is named. Captions (and items without a QA task) always count as answered. An intervention that
    turns "yellow" into "no" or into nothing has not fixed the colour question, it has stopped answering it, so
    a fix of a QA error needs this to be true (the cause × intervention matrix and confirmation read it).
    """
    task = getattr(item, "task", None)
    if task not in QA_TASKS:
        return True
    vocab = _vocab(vocabulary)
    if task in ("exists", "relation"):
        return yes_no_span(text) is not None
    meta = _meta_or_prompt(item, vocab)
    att = vocab.attribute_names.get(str(meta["attribute"]).lower(), str(meta["attribute"]).lower())
    return attribute_value_span(text, att, vocab) is not None


def states_truth(text: str, subject: str, attribute: str, truth: Any, vocabulary: Vocabulary | None = None) -> bool:
    """Does ``text`` state ``subject``'s ``attribute`` with a true value (one of ``truth``, a value or the judge's
    ``"a|b"`` join)? A fix of an attribute error needs it: a caption that drops the object, or only its colour, has
    no colour error left but has not been repaired."""
    if truth is None or (isinstance(truth, float) and truth != truth):
        return False
    vocab = _vocab(vocabulary)
    true = set(str(truth).split("|"))
    return any(c.kind == "attribute" and not c.negated and c.subject == subject and c.attribute == attribute
               and c.value in true for c in extract_claims(str(text), vocab))


def states_relation(text: str, subject: str, obj: str, truth: Any, vocabulary: Vocabulary | None = None) -> bool:
    """Does ``text`` state a true relation between ``subject`` and ``obj``: ``subject <p> obj`` with ``p`` one of
    ``truth`` (a predicate or the judge's ``"a|b"`` join), or ``obj <q> subject`` with ``q`` the converse of one?
    A fix of a relation error in free text needs it, as an attribute fix needs the true value: a caption that no
    longer relates the two has no relation error left but has not been repaired. With no true relation between
    them (``truth`` None) there is nothing true to state, and the claim's absence is the fix."""
    if truth is None or (isinstance(truth, float) and truth != truth):
        return True
    true = set(str(truth).split("|"))
    converse = {GEOMETRIC_RELATIONS[p] for p in true if p in GEOMETRIC_RELATIONS}
    for c in extract_claims(str(text), _vocab(vocabulary)):
        if c.kind != "relation" or c.negated:
            continue
        if (c.subject, c.object) == (subject, obj) and c.value in true or \
                (c.subject, c.object) == (obj, subject) and c.value in converse:
            return True
    return False


def claims_kept(errors: pd.DataFrame, items: Sequence[Any], texts: dict[str, str],
                vocabulary: Vocabulary | None = None) -> np.ndarray:
    """Bool [n_errors]: is each error's claim still made where it has to be, in the new ``texts`` (item id -> text)?

    A question must still get a readable answer (:func:`~lvlm_probe.misalignment.answers_question`: a colour
    question answered "no" has no error left but is not fixed), and an attribute error in free text needs the true
    value stated for the same object (:func:`~lvlm_probe.misalignment.states_truth`: a caption that drops the
    object or its colour is not repaired), and a false relation in free text a true relation between the same two
    objects (:func:`~lvlm_probe.misalignment.states_relation`). A hallucinated object dropped from a caption, or an
    omitted one now named, is fixed by the error's absence alone. The cause × intervention matrix and interventional confirmation
    both read it."""
    if not len(errors):
        return np.zeros(0, dtype=bool)
    by_id = {it.id: it for it in items}
    out = []
    for r in errors.itertuples(index=False):
        iid = str(r.item_id)
        item, text = by_id.get(iid), texts.get(iid, "")
        if item is not None and item.task in QA_TASKS:
            out.append(answers_question(text, item, vocabulary))
        elif r.kind == "attribute" and r.polarity != "omitted":
            if "truth" not in errors.columns:
                from lvlm_probe.errors import InputError

                raise InputError(f"claims_kept: the attribute error on item {iid!r} needs its 'truth' column (the "
                                 "judge's output has it) to check that the true value is stated; pass the judged "
                                 "errors, not only their keys")
            out.append(states_truth(text, r.subject, r.attribute, getattr(r, "truth", None), vocabulary))
        elif r.kind == "relation" and r.polarity == "hallucinated":
            out.append(states_relation(text, r.subject, getattr(r, "object", None), getattr(r, "truth", None),
                                       vocabulary))
        else:
            out.append(True)
    return np.array(out, dtype=bool)


# ------------------------------------------------------------------------------------------------- public
def judge(generation_or_text: Any, scene: Any = None, *, vocabulary: Vocabulary | None = None, item: Any = None,
          b: int = 0, omissions: bool = True) -> list[Misalignment]:
    """Typed misalignments of one generated text against its scene graph.

    Parameters
    ----------
    generation_or_text : str or Generation-like
        The text, or anything with ``.text`` (list of str) and ``.token_spans`` (per item, the character span of
        each generated token), such as :class:`lvlm_probe.models.records.Generation`; item ``b`` is judged and
        its token spans fill :attr:`Misalignment.token_indices`.
    scene : SceneGraph, optional
        Ground truth (or its ``to_dict()`` form). Default: ``item.scene``.
    vocabulary : Vocabulary, optional
        Default :meth:`Vocabulary.synthetic`.
    item : Item, optional
        With ``task`` ``"exists"``, ``"attribute"`` or ``"relation"`` the text is judged as the answer to that
        question (yes/no, or a short attribute answer); the question comes from ``item.meta`` (``target``,
        ``attribute``, ``subject``/``predicate``/``object``) or, failing that, from ``item.prompt``. With task
        ``"caption"`` or None the text is judged as free text. ``item.id`` fills :attr:`Misalignment.item_id`.
    b : int
        Which item of a batched generation.
    omissions : bool
        Report present classes the free text never mentions (object / omitted, no span).

    Returns
    -------
    list of Misalignment
        Errors with spans in text order, then never-mentioned objects in scene order.

    Raises
    ------
    InputError
        The scene is not a SceneGraph, the text is not a str / Generation, ``b`` is out of range, the item's
        task is unknown, or a QA item does not say what it asks about.
    """
    vocab = _vocab(vocabulary)
    text, token_spans = _text_and_spans(generation_or_text, b)
    task = getattr(item, "task", None) if item is not None else None
    if task not in FREE_TEXT_TASKS and task not in QA_TASKS:
        raise InputError(f"item {getattr(item, 'id', '?')!r}: cannot judge task {task!r}; judge knows free text "
                         f"(task None or 'caption') and the QA tasks {list(QA_TASKS)}")
    truth = _Truth(_scene(scene, item), vocab)
    if task in QA_TASKS:
        return _judge_qa(text, token_spans, item, truth, vocab)
    claims = extract_claims(text, vocab, token_spans)
    result = _judge_claims(claims, truth, omissions) + _judge_counts(text, claims, truth)
    result.sort(key=lambda m: (m.span is None, m.span[0] if m.span else 0))
    if item is not None:
        for m in result:
            m.item_id = getattr(item, "id", None)
    return result


def misalignments_frame(misalignments: Sequence[Misalignment]) -> pd.DataFrame:
    """A tidy DataFrame, one row per misalignment.

    Columns are :data:`FRAME_COLUMNS`; span columns and ``first_token`` are nullable integers (``<NA>`` for
    omissions without a span), missing strings are None.
    """
    rows = []
    for m in misalignments:
        if not isinstance(m, Misalignment):
            raise InputError(f"misalignments_frame takes Misalignment records, got {type(m).__name__}")
        span = m.span or (None, None)
        cspan = m.claim_span or (None, None)
        rows.append({"item_id": m.item_id, "kind": m.kind, "polarity": m.polarity, "subject": m.subject,
                     "attribute": m.attribute, "object": m.object, "claimed": m.claimed, "truth": m.truth,
                     "negated": m.negated, "text": m.text, "start": span[0], "end": span[1], "claim_start": cspan[0],
                     "claim_end": cspan[1], "token_indices": list(m.token_indices), "first_token": m.first_token,
                     "source": m.source})
    df = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    for col in ("start", "end", "claim_start", "claim_end", "first_token"):
        df[col] = df[col].astype("Int64")
    for col in ("item_id", "attribute", "object", "claimed", "truth", "text"):  # missing strings stay None, not NaN
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def judge_frame(generation_or_text: Any, scene: Any = None, **kw: Any) -> pd.DataFrame:
    """:func:`judge` as a DataFrame (see :func:`misalignments_frame`)."""
    return misalignments_frame(judge(generation_or_text, scene, **kw))


def judge_batch(generation: Any, scenes: Sequence[Any] | None = None, items: Sequence[Any] | None = None, *,
                vocabulary: Vocabulary | None = None, omissions: bool = True) -> pd.DataFrame:
    """Judge every item of a batched generation; one row per misalignment.

    Parameters
    ----------
    generation : Generation-like or list of str
        ``.text`` (and ``.token_spans``) per item, or plain texts.
    scenes : sequence of SceneGraph, optional
        One per item; default each ``items[b].scene``.
    items : sequence of Item, optional
        One per item: its task decides free-text or QA judging and its id fills the ``item_id`` column.

    Returns
    -------
    pandas.DataFrame
        :data:`FRAME_COLUMNS` plus ``b`` (batch index); ``item_id`` is the item id, or ``str(b)`` without items.
        Items without errors have no row.
    """
    if isinstance(generation, (list, tuple)):
        if not all(isinstance(t, str) for t in generation):
            raise InputError("judge_batch: a list generation must hold str texts")
        texts: Sequence[str] = generation
    elif hasattr(generation, "text") and not isinstance(generation.text, str):
        texts = generation.text
    else:
        raise InputError(f"judge_batch needs a Generation-like object (.text list) or a list of str, got "
                         f"{type(generation).__name__}")
    n = len(texts)
    for what, seq in (("scenes", scenes), ("items", items)):
        if seq is not None and len(seq) != n:
            raise InputError(f"judge_batch: {len(seq)} {what} for {n} generated texts; give one per text")
    if scenes is None and items is None:
        raise InputError("judge_batch needs scenes=[...] or items=[...] (with .scene) to judge against")
    vocab = _vocab(vocabulary)
    frames = []
    for k in range(n):
        src = texts[k] if isinstance(generation, (list, tuple)) else generation
        ms = judge(src, scenes[k] if scenes is not None else None, vocabulary=vocab,
                   item=items[k] if items is not None else None, b=k, omissions=omissions)
        if not ms:
            continue
        df = misalignments_frame(ms)
        df["item_id"] = str(items[k].id) if items is not None else str(k)
        df.insert(1, "b", k)
        frames.append(df)
    if not frames:
        empty = misalignments_frame([])
        empty.insert(1, "b", pd.Series(dtype="int64"))
        return empty
    return pd.concat(frames, ignore_index=True)
