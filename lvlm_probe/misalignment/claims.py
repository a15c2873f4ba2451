"""Claims: what a generated text says about objects, their attributes and their relations.

:func:`extract_claims` reads a text with a :class:`~lvlm_probe.misalignment.vocab.Vocabulary` and returns one
:class:`Claim` per object mention, per attribute word that modifies a mention, and per relation phrase between two
mentions, each with the character span of the word(s) that carry the claimed value and, when the generation's
token spans are given, the indices of the generated tokens covering it.

The reader is a small rule-based chunker written for this package (no NLP library does typed claims with exact
character spans offline); what it handles and what it does not is listed in ``docs/misalignment.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from lvlm_probe.errors import InputError
from lvlm_probe.misalignment.vocab import WORD_RE, Vocabulary, default_vocabulary

CLAIM_KINDS: tuple[str, ...] = ("object", "attribute", "relation")

Span = tuple[int, int]

# Closed word classes the chunker uses (lower case).
BE_WORDS = frozenset({"is", "are", "was", "were", "be", "being", "been", "looks", "look", "appears", "appear",
                      "seems", "seem", "isn't", "aren't", "wasn't", "weren't"})
NOT_WORDS = frozenset({"not", "never", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "can't",
                       "cannot", "couldn't", "n't", "isn\u2019t", "aren\u2019t", "don\u2019t", "doesn\u2019t",
                       "can\u2019t"})
DETERMINERS = frozenset({"a", "an", "the", "some", "another", "this", "that", "these", "those", "its", "his", "her",
                         "their", "each", "every", "several", "many", "few", "any", "one", "two", "three", "four",
                         "five", "six", "seven", "eight", "nine", "ten", "single", "other"})
SEE_VERBS = frozenset({"see", "find", "spot", "notice", "detect", "observe", "contain", "contains", "have", "has"})
RELATION_FILLERS = BE_WORDS | NOT_WORDS | frozenset({
    "located", "placed", "positioned", "situated", "sitting", "sits", "standing", "stands", "lying", "lies",
    "directly", "just", "slightly", "immediately", "that", "which", "who", "also", "seen", "found", "drawn", "shown"})
COORDINATORS = frozenset({"and", ","})


@dataclass
class Claim:
    """One claim of a text.

    Attributes
    ----------
    kind : {"object", "attribute", "relation"}
    subject : str
        Canonical class of the object the claim is about.
    value : str
        What is claimed: the class (object), the attribute value (attribute) or the predicate (relation).
    span : (int, int)
        Characters ``text[start:end]`` of the word(s) carrying ``value``: the object word, the attribute word,
        the relation phrase. This is the part a wrong token would have produced.
    claim_span : (int, int)
        Characters of the whole claim: the noun phrase (attributes + object word) or, for relations, from the
        subject's noun phrase to the object word.
    text : str
        ``text[span[0]:span[1]]`` as written.
    attribute : str, optional
        Attribute type (``"color"``, ``"size"``, ...) of attribute claims.
    object : str, optional
        Canonical class of a relation's object.
    negated : bool
        The text denies the claim ("there is no ring", "the circle is not red", "... is not left of ...").
    mention : int
        Index of the object mention (noun phrase) the claim is about, in text order; relation claims give the
        subject's mention.
    object_mention : int, optional
        Mention index of a relation's object.
    token_indices : list of int
        Generated-token indices whose character spans overlap ``span`` (empty without token spans).
    """

    kind: str
    subject: str
    value: str
    span: Span
    claim_span: Span
    text: str
    attribute: str | None = None
    object: str | None = None
    negated: bool = False
    mention: int = -1
    object_mention: int | None = None
    token_indices: list[int] = field(default_factory=list)

    @property
    def predicate(self) -> str | None:
        """The predicate of a relation claim (None for other kinds)."""
        return self.value if self.kind == "relation" else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["span"], d["claim_span"] = tuple(self.span), tuple(self.claim_span)
        return d


@dataclass
class _Unit:
    """A word, or a vocabulary phrase of several words, with what it can mean."""

    word: str  # lower-cased surface (words joined by spaces)
    start: int
    end: int
    meanings: dict[str, Any]


@dataclass
class _NounPhrase:
    attrs: list[int]  # unit indices of the attribute words
    head: int  # unit index of the object word
    first: int  # first unit index (first attribute or head)
    negated: bool = False


def tokens_for_span(span: Span | None, token_spans: Sequence[Sequence[int]] | None) -> list[int]:
    """Indices of the tokens whose character range overlaps ``span`` (empty spans never overlap).

    Parameters
    ----------
    span : (start, end) or None
    token_spans : sequence of (start, end)
        Character span of each generated token in the text (``Generation.token_spans[b]``).
    """
    if span is None or not token_spans:
        return []
    s, e = span
    return [k for k, (ts, te) in enumerate(token_spans) if ts < te and ts < e and te > s]


def _lex(text: str, vocabulary: Vocabulary) -> list[_Unit]:
    words = [(m.group().lower(), m.start(), m.end()) for m in WORD_RE.finditer(text)]
    table, longest = vocabulary.phrase_table()
    units: list[_Unit] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            key = tuple(w for w, _, _ in words[i:i + n])
            if key in table:
                units.append(_Unit(" ".join(key), words[i][1], words[i + n - 1][2], dict(table[key])))
                i += n
                break
        else:
            units.append(_Unit(words[i][0], words[i][1], words[i][2], {}))
            i += 1
    return units


def _noun_phrases(units: list[_Unit]) -> list[_NounPhrase]:
    """Runs ``attribute* object``; a word that is both (COCO "orange") is an attribute only before an object word."""
    nps: list[_NounPhrase] = []
    i, n = 0, len(units)
    while i < n:
        m = units[i].meanings
        if "attribute" not in m and "object" not in m:
            i += 1
            continue
        j = i
        while j < n and "attribute" in units[j].meanings:
            j += 1
        if j < n and "object" in units[j].meanings:
            head = j
        elif j > i and "object" in units[j - 1].meanings:
            head = j - 1
        else:  # attribute words without an object word (maybe predicative; read later)
            i = max(j, i + 1)
            continue
        nps.append(_NounPhrase(attrs=list(range(i, head)), head=head, first=i))
        i = head + 1
    return nps


def _skip_back(units: list[_Unit], k: int, words: frozenset[str]) -> int:
    while k >= 0 and units[k].word in words and not units[k].meanings:
        k -= 1
    return k


def _is_denied(units: list[_Unit], first: int) -> bool:
    """Whether the noun phrase starting at unit ``first`` is denied: "no X", "there is not a X", "I don't see a X"."""
    k = _skip_back(units, first - 1, frozenset({"a", "an", "any", "single"}))
    if k < 0 or units[k].meanings:
        return False
    w = units[k].word
    if w == "no":
        return True
    if w in ("isn't", "aren't", "wasn't", "weren't", "isn\u2019t", "aren\u2019t"):
        return k >= 1 and units[k - 1].word == "there"
    if w == "not":
        return (k >= 2 and units[k - 1].word in BE_WORDS and units[k - 2].word == "there") or \
               (k >= 1 and units[k - 1].word in ("do", "does", "did", "can", "could"))
    if w in SEE_VERBS:  # "I don't see a ring", "I do not see any ring", "I cannot find a ring"
        j = k - 1
        if j >= 0 and units[j].word in NOT_WORDS:
            return True
        return j >= 1 and units[j].word == "not" and units[j - 1].word in ("do", "does", "did", "can", "could")
    return False


def _mark_negation(units: list, nps: list) -> None:
    """Negation of noun phrases, carried over "or"/"nor" coordination ("no circle or square")."""
    for k, np_ in enumerate(nps):
        np_.negated = _is_denied(units, np_.first)
        if not np_.negated and k > 0 and nps[k - 1].negated:
            j = _skip_back(units, np_.first - 1, DETERMINERS)
            np_.negated = j == nps[k - 1].head + 1 and units[j].word in ("or", "nor")


def _cls(units: list, np_: Any) -> str:
    return units[np_.head].meanings["object"]


def _span(units: list, a: int, b: int) -> Span:
    return units[a].start, units[b].end


def _relation_claims(text: str, units: list, nps: list) -> tuple[list[Claim], set[int]]:
    """Relations "NP (fillers) RELATION (determiners) NP", and the noun phrases whose negation denies the
    relation rather than the object ("there is no circle left of the ring")."""
    in_np = {u for np_ in nps for u in (*np_.attrs, np_.head)}
    head_to_np = {np_.head: k for k, np_ in enumerate(nps)}
    first_to_np = {np_.first: k for k, np_ in enumerate(nps)}
    claims: list[Claim] = []
    relation_subjects: set[int] = set()
    for r, u in enumerate(units):
        if "relation" not in u.meanings or r in in_np:
            continue
        k = _skip_back(units, r - 1, RELATION_FILLERS)
        j = r + 1
        while j < len(units) and units[j].word in DETERMINERS and not units[j].meanings:
            j += 1
        if k < 0 or k not in head_to_np or j not in first_to_np:
            continue
        s_np, o_np = nps[head_to_np[k]], nps[first_to_np[j]]
        negated = any(units[x].word in NOT_WORDS for x in range(k + 1, r)) or s_np.negated
        if s_np.negated:
            relation_subjects.add(head_to_np[k])
        claims.append(Claim("relation", _cls(units, s_np), u.meanings["relation"], (u.start, u.end),
                            _span(units, s_np.first, o_np.head), text[u.start:u.end], object=_cls(units, o_np),
                            negated=negated, mention=head_to_np[k], object_mention=first_to_np[j]))
    return claims, relation_subjects


def _phrase_claims(text: str, units: list, nps: list, k: int) -> list[Claim]:
    """Noun phrase ``k``'s object claim, its prenominal attributes and its predicative ones ("the circle is
    (not) large and red")."""
    np_ = nps[k]
    cls_name, h = _cls(units, np_), units[np_.head]
    claims: list[Claim] = []
    if not np_.attrs:
        claims.append(Claim("object", cls_name, cls_name, (h.start, h.end), (h.start, h.end), text[h.start:h.end],
                            negated=np_.negated, mention=k))
    elif not np_.negated:  # "there is no red circle" denies the red circle, not every circle
        claims.append(Claim("object", cls_name, cls_name, (h.start, h.end), _span(units, np_.first, np_.head),
                            text[h.start:h.end], mention=k))
    for a in np_.attrs:
        att, val = units[a].meanings["attribute"]
        claims.append(Claim("attribute", cls_name, val, (units[a].start, units[a].end),
                            _span(units, np_.first, np_.head), text[units[a].start:units[a].end], attribute=att,
                            negated=np_.negated, mention=k))
    in_np = {u for p in nps for u in (*p.attrs, p.head)}
    j = np_.head + 1
    if j < len(units) and units[j].word in BE_WORDS:
        negated = units[j].word in NOT_WORDS
        j += 1
        if j < len(units) and units[j].word in NOT_WORDS:
            negated, j = True, j + 1
        while j < len(units) and "attribute" in units[j].meanings and j not in in_np:
            att, val = units[j].meanings["attribute"]
            claims.append(Claim("attribute", cls_name, val, (units[j].start, units[j].end),
                                _span(units, np_.first, j), text[units[j].start:units[j].end], attribute=att,
                                negated=negated, mention=k))
            j += 1
            if j + 1 < len(units) and units[j].word in COORDINATORS and "attribute" in units[j + 1].meanings:
                j += 1
    return claims


def extract_claims(text: str, vocabulary: Vocabulary | None = None, token_spans: Sequence[Sequence[int]] | None = None
                   ) -> list[Claim]:
    """Object, attribute and relation claims of a text, with character and token spans.

    Parameters
    ----------
    text : str
        A generated caption or answer.
    vocabulary : Vocabulary, optional
        Default :meth:`Vocabulary.synthetic`.
    token_spans : sequence of (start, end), optional
        Character span of each generated token in ``text`` (``Generation.token_spans[b]``); fills
        :attr:`Claim.token_indices`.

    Returns
    -------
    list of Claim
        Sorted by the position of the claimed word(s).

    Examples
    --------
    >>> [(c.kind, c.subject, c.value) for c in extract_claims("a large red circle left of a ring .")]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('attribute', 'circle', 'large'), ('attribute', 'circle', 'red'), ('object', 'circle', 'circle'),
     ('relation', 'circle', 'left of'), ('object', 'ring', 'ring')]
    """
    if not isinstance(text, str):
        raise InputError(f"extract_claims needs a str, got {type(text).__name__}; pass generation.text[b]")
    vocab = default_vocabulary() if vocabulary is None else vocabulary
    if not isinstance(vocab, Vocabulary):
        raise InputError(f"vocabulary must be a Vocabulary (e.g. Vocabulary.synthetic()), got {type(vocab).__name__}")
    units = _lex(text, vocab)
    nps = _noun_phrases(units)
    _mark_negation(units, nps)
    claims, relation_subjects = _relation_claims(text, units, nps)
    for k in range(len(nps)):
        if k not in relation_subjects:
            claims += _phrase_claims(text, units, nps, k)
    rank = {k: n for n, k in enumerate(CLAIM_KINDS)}
    claims.sort(key=lambda c: (c.span[0], rank[c.kind]))
    if token_spans is not None:
        for c in claims:
            c.token_indices = tokens_for_span(c.span, token_spans)
    return claims


def claims_frame(claims: Sequence[Claim]):
    """A tidy DataFrame, one row per claim (span columns ``start, end, claim_start, claim_end``)."""
    import pandas as pd

    cols = ["kind", "subject", "value", "attribute", "object", "negated", "text", "start", "end", "claim_start",
            "claim_end", "mention", "object_mention", "token_indices"]
    rows = [{"kind": c.kind, "subject": c.subject, "value": c.value, "attribute": c.attribute, "object": c.object,
             "negated": c.negated, "text": c.text, "start": c.span[0], "end": c.span[1], "claim_start": c.claim_span[0],
             "claim_end": c.claim_span[1], "mention": c.mention, "object_mention": c.object_mention,
             "token_indices": list(c.token_indices)} for c in claims]
    return pd.DataFrame(rows, columns=cols)
