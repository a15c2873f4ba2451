"""The one reader of each answer form, shared by the judge, the organisms' checks and cards.

- :func:`yes_no_span` / :func:`read_yes_no`: the answer to a yes/no question;
- :func:`attribute_value_span` / :func:`read_attribute_value`: the value of an attribute question's answer;
- :func:`caption_objects`: the objects a caption mentions, with their attributes.

Benchmark scorers keep their own documented parser profiles (``lvlm_probe.benchmarks.parsers``): each reproduces
its original code, quirks included.
"""

from __future__ import annotations

from lvlm_probe.misalignment.claims import NOT_WORDS, Span, _lex, extract_claims
from lvlm_probe.misalignment.vocab import WORD_RE, Vocabulary, default_vocabulary


def yes_no_span(text: str) -> tuple[str, Span] | None:
    """The answer's first "yes" or "no" with its span; else its first negation word ("not", "isn't") as no."""
    first_not = None
    for m in WORD_RE.finditer(text):
        w = m.group().lower()
        if w in ("yes", "no"):
            return w, (m.start(), m.end())
        if first_not is None and w in NOT_WORDS:
            first_not = ("no", (m.start(), m.end()))
    return first_not


def read_yes_no(text: str) -> str | None:
    """``"yes"``, ``"no"`` or None (no answer word) — see :func:`yes_no_span`."""
    ans = yes_no_span(text)
    return ans[0] if ans is not None else None


def attribute_value_span(text: str, attribute: str, vocabulary: Vocabulary | None = None) -> tuple[str, Span] | None:
    """The first value of attribute type ``attribute`` (e.g. ``"color"``) the answer names, with its span."""
    for u in _lex(text, vocabulary or default_vocabulary()):
        a = u.meanings.get("attribute")
        if a is not None and a[0] == attribute:
            return a[1], (u.start, u.end)
    return None


def read_attribute_value(text: str, attribute: str, vocabulary: Vocabulary | None = None) -> str | None:
    """The attribute value the answer names, or None — see :func:`attribute_value_span`."""
    ans = attribute_value_span(text, attribute, vocabulary)
    return ans[0] if ans is not None else None


def caption_objects(text: str, vocabulary: Vocabulary | None = None) -> list[dict[str, str]]:
    """The objects a caption mentions (not denied), in order: ``{"name": class, <attribute type>: value, ...}``.

    The same claims the judge reads (:func:`~lvlm_probe.misalignment.extract_claims`), so a model card and a
    diagnosis agree on what a caption says.
    """
    claims = extract_claims(text, vocabulary)
    objects: dict[int, dict[str, str]] = {}
    for c in claims:
        if c.kind == "object" and not c.negated:
            objects[c.mention] = {"name": c.subject}
    for c in claims:
        if c.kind == "attribute" and not c.negated and c.mention in objects and c.attribute:
            objects[c.mention][c.attribute] = c.value
    return [objects[k] for k in sorted(objects)]
