"""Vocabularies: which words name objects, attribute values and relations, and what they mean.

A :class:`Vocabulary` maps surface phrases (lower case, one or more words) to canonical meanings:

- ``objects``: phrase -> class name (synonyms and plural forms included), e.g. ``"dogs" -> "dog"``;
- ``attributes``: phrase -> ``(attribute type, canonical value)``, e.g. ``"grey" -> ("color", "gray")``;
- ``relations``: phrase -> canonical predicate, e.g. ``"to the left of" -> "left of"``.

Two are built in: :meth:`Vocabulary.synthetic` (the shapes world of :mod:`lvlm_probe.data.world`) and
:meth:`Vocabulary.coco` (COCO classes from the CHAIR synonym list, plus a few common colours, sizes, materials and
spatial relations). Matching is done by :func:`lvlm_probe.misalignment.extract_claims`: whole words,
case-insensitive, longest phrase first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lvlm_probe.errors import InputError

#: Words (and two-word forms) of the text, as the claim extractor splits it: runs of word characters with inner
#: apostrophes ("isn't"), or single punctuation characters.
WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")

#: Irregular plurals of English nouns that occur in object vocabularies (the regular rules are in :func:`plural`).
IRREGULAR_PLURALS: dict[str, str] = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet", "tooth": "teeth",
    "mouse": "mice", "goose": "geese", "ox": "oxen", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "knife": "knives", "leaf": "leaves", "shelf": "shelves", "wolf": "wolves", "calf": "calves", "skis": "skis",
    "scissors": "scissors", "policeman": "policemen", "gentleman": "gentlemen", "serviceman": "servicemen",
    "bison": "bison", "cattle": "cattle", "people": "people", "children": "children", "oxen": "oxen",
    "luggage": "luggage", "broccoli": "broccoli", "bus": "buses", "cactus": "cacti",
}

#: Words naming an attribute type (used to read QA prompts such as "what color is the circle ?").
ATTRIBUTE_NAMES: dict[str, str] = {"color": "color", "colour": "color", "size": "size", "material": "material"}

#: Geometric relation phrases shared by both built-in vocabularies.
GEOMETRIC_PHRASES: dict[str, str] = {
    **{p: side + " of" for side in ("left", "right")
       for p in (f"{side} of", f"to the {side} of", f"on the {side} of", f"to the {side} side of",
                 f"on the {side} side of", f"at the {side} of")},
    "above": "above", "over": "above", "on top of": "above", "atop": "above",
    "below": "below", "under": "below", "underneath": "below", "beneath": "below",
}

#: Extra relations of the COCO vocabulary, kept as their own predicates.
COCO_RELATION_PHRASES: dict[str, str] = {
    "on": "on", "onto": "on", "next to": "next to", "beside": "next to", "near": "near",
    "close to": "near", "behind": "behind", "in front of": "in front of", "in": "in", "inside": "in",
    "inside of": "in",
}

#: Attribute words of the COCO vocabulary: phrase -> (type, canonical value).
COCO_ATTRIBUTES: dict[str, tuple[str, str]] = {
    **{c: ("color", c) for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                                 "white", "gray", "silver", "gold", "beige")},
    "grey": ("color", "gray"),
    "small": ("size", "small"), "little": ("size", "small"), "tiny": ("size", "small"),
    "large": ("size", "large"), "big": ("size", "large"), "huge": ("size", "large"), "giant": ("size", "large"),
    "wooden": ("material", "wood"), "wood": ("material", "wood"), "metal": ("material", "metal"),
    "metallic": ("material", "metal"), "plastic": ("material", "plastic"), "glass": ("material", "glass"),
    "stone": ("material", "stone"), "leather": ("material", "leather"),
}


def phrase_key(phrase: str) -> tuple[str, ...]:
    """The word tuple a phrase is matched by (lower case, split like the text)."""
    return tuple(w.lower() for w in WORD_RE.findall(phrase))


def plural(noun: str) -> str:
    """English plural of ``noun`` (last word of a phrase): irregular table, then -es / -ies / -s rules."""
    head, _, last = noun.rpartition(" ")
    if last in IRREGULAR_PLURALS:
        p = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


@dataclass
class Vocabulary:
    """Surface phrases of objects, attribute values and relations, with their canonical meanings.

    Parameters
    ----------
    objects : dict of str to str
        Phrase -> class name. Plural forms are added by :meth:`with_plurals` (the built-ins already have them).
    attributes : dict of str to (str, str)
        Phrase -> ``(attribute type, value)``, e.g. ``{"red": ("color", "red")}``.
    relations : dict of str to str
        Phrase -> predicate, e.g. ``{"to the left of": "left of"}``.
    attribute_names : dict of str to str
        Words naming an attribute type (``"colour" -> "color"``), used to read QA prompts.
    name : str
        A label for reports.

    Notes
    -----
    A phrase may be both an object and an attribute (COCO's ``"orange"``): the extractor reads it as an attribute
    when an object word follows it, else as an object. Keys are normalised to lower-case word tuples, so
    ``"Traffic  light"`` and ``"traffic light"`` are the same phrase.
    """

    objects: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)
    relations: dict[str, str] = field(default_factory=dict)
    attribute_names: dict[str, str] = field(default_factory=lambda: dict(ATTRIBUTE_NAMES))
    name: str = "custom"

    def __post_init__(self) -> None:
        for what, table in (("objects", self.objects), ("attributes", self.attributes), ("relations", self.relations)):
            if not isinstance(table, Mapping):
                raise InputError(f"Vocabulary.{what} must be a dict of phrase -> meaning, got {type(table).__name__}")
        for phrase, meaning in self.attributes.items():
            if not (isinstance(meaning, tuple) and len(meaning) == 2):
                raise InputError(f"Vocabulary.attributes[{phrase!r}] = {meaning!r}; give (attribute type, value), "
                                 "e.g. ('color', 'red')")
        self.objects = {" ".join(phrase_key(k)): str(v).lower() for k, v in self.objects.items() if phrase_key(k)}
        self.attributes = {" ".join(phrase_key(k)): (str(t).lower(), str(v).lower())
                           for k, (t, v) in self.attributes.items() if phrase_key(k)}
        self.relations = {" ".join(phrase_key(k)): str(v).lower() for k, v in self.relations.items() if phrase_key(k)}
        self.attribute_names = {k.lower(): v.lower() for k, v in self.attribute_names.items()}

    def __repr__(self) -> str:
        return (f"Vocabulary(name={self.name!r}, {len(self.classes)} classes / {len(self.objects)} object phrases, "
                f"{len(self.attributes)} attribute phrases, {len(self.relations)} relation phrases)")

    # ---- built-ins --------------------------------------------------------------------------------
    @classmethod
    def synthetic(cls, classes: Iterable[str] | None = None, colors: Iterable[str] | None = None,
                  sizes: Iterable[str] | None = None) -> Vocabulary:
        """The shapes world's words: its classes (and plurals), colours, sizes and the four geometric relations.

        Parameters
        ----------
        classes, colors, sizes : iterables of str, optional
            Default: :data:`lvlm_probe.data.world.CLASSES`, ``COLORS`` and ``SIZES``.
        """
        from lvlm_probe.data import world

        classes = list(world.CLASSES if classes is None else classes)
        colors = list(world.COLORS if colors is None else colors)
        sizes = list(world.SIZES if sizes is None else sizes)
        objects = {c: c for c in classes}
        attrs = {**{c: ("color", c) for c in colors}, **{s: ("size", s) for s in sizes}}
        return cls(objects=objects, attributes=attrs, relations=dict(GEOMETRIC_PHRASES), name="synthetic").with_plurals()

    @classmethod
    def coco(cls, synonyms: Any) -> Vocabulary:
        """COCO objects from the CHAIR synonym list, with COCO-style attributes and relations.

        Parameters
        ----------
        synonyms : path, ChairVocab or dict
            CHAIR's ``synonyms.txt`` (``canonical, syn1, syn2, ...`` per line), a
            :class:`lvlm_probe.benchmarks.chair.ChairVocab` from :func:`~lvlm_probe.benchmarks.chair.load_synonyms`,
            or a dict synonym -> class. The list is not shipped with the package (its licence belongs to the CHAIR
            authors); the benchmark samples hold a copy.

        Notes
        -----
        Unlike CHAIR (which reproduces its parsing quirks), keys are stripped and lower-cased, so ``" motor bike"``
        and ``"iPhone"`` match. CHAIR's double-word rules (``"baby cat"`` -> cat, ``"toilet seat"`` -> toilet) are
        added as phrases, and plurals of every synonym are generated (``"dogs"``, ``"men"``, ``"people"``).
        """
        if synonyms is None:
            raise InputError("Vocabulary.coco needs the CHAIR synonym list: pass the path of synonyms.txt (CHAIR's "
                             "data/synonyms.txt), a ChairVocab from lvlm_probe.benchmarks.chair.load_synonyms, or a dict")
        double: dict[str, str] = {}
        if isinstance(synonyms, (str, os.PathLike)):
            from lvlm_probe.benchmarks.chair import load_synonyms  # CHAIR's own parser; needs no NLTK

            synonyms = load_synonyms(synonyms)
        if hasattr(synonyms, "inverse"):  # a ChairVocab
            inverse = dict(synonyms.inverse)
            double = dict(getattr(synonyms, "double_words", {}) or {})
        elif isinstance(synonyms, Mapping):
            inverse = dict(synonyms)
        else:
            raise InputError(f"Vocabulary.coco: synonyms must be a path, a ChairVocab or a dict, got "
                             f"{type(synonyms).__name__}")
        objects = {str(k).strip().lower(): str(v).strip().lower() for k, v in inverse.items() if str(k).strip()}
        for phrase, word in double.items():  # "baby cat" -> "cat" -> class cat; "bow tie" -> "tie"
            cls_name = objects.get(word.strip().lower())
            if cls_name is not None and phrase.strip().lower() not in objects:
                objects[phrase.strip().lower()] = cls_name
        relations = {**GEOMETRIC_PHRASES, **COCO_RELATION_PHRASES}
        return cls(objects=objects, attributes=dict(COCO_ATTRIBUTES), relations=relations, name="coco").with_plurals()

    # ---- editing ----------------------------------------------------------------------------------
    def with_plurals(self) -> Vocabulary:
        """A copy where the plural of every object phrase maps to its class (existing phrases win)."""
        objects = dict(self.objects)
        for phrase, cls_name in self.objects.items():
            objects.setdefault(plural(phrase), cls_name)
        return Vocabulary(objects, dict(self.attributes), dict(self.relations), dict(self.attribute_names), self.name)

    def extend(self, objects: Mapping[str, str] | None = None, attributes: Mapping[str, tuple[str, str]] | None = None,
               relations: Mapping[str, str] | None = None) -> Vocabulary:
        """A copy with more (or overriding) phrases; give plurals yourself or call :meth:`with_plurals`."""
        return Vocabulary({**self.objects, **(objects or {})}, {**self.attributes, **(attributes or {})},
                          {**self.relations, **(relations or {})}, dict(self.attribute_names), self.name)

    # ---- lookups ----------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Canonical class names, sorted."""
        return sorted(set(self.objects.values()))

    def canonical_object(self, name: str) -> str:
        """The class a scene's object name stands for (itself when the vocabulary does not know it)."""
        key = " ".join(phrase_key(name))
        return self.objects.get(key, key)

    def canonical_value(self, value: str) -> str:
        """The canonical attribute value of a scene's value (``"grey"`` -> ``"gray"``; unknown values lower-cased)."""
        key = " ".join(phrase_key(value))
        return self.attributes[key][1] if key in self.attributes else key

    def canonical_predicate(self, predicate: str) -> str:
        """The canonical predicate of a scene's relation name (``"on top of"`` -> ``"above"``)."""
        key = " ".join(phrase_key(predicate))
        return self.relations.get(key, key)

    def phrase_table(self) -> tuple[dict[tuple[str, ...], dict[str, Any]], int]:
        """Word tuple -> ``{"object": cls, "attribute": (type, value), "relation": predicate}`` and the longest length.

        Cached while the three dicts are the same objects with the same sizes; treat a vocabulary as read-only
        (use :meth:`extend` for changes).
        """
        key = tuple((id(d), len(d)) for d in (self.objects, self.attributes, self.relations))
        cached = self.__dict__.get("_table_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        table: dict[tuple[str, ...], dict[str, Any]] = {}
        for kind, src in (("object", self.objects), ("attribute", self.attributes), ("relation", self.relations)):
            for phrase, meaning in src.items():
                table.setdefault(phrase_key(phrase), {})[kind] = meaning
        result = (table, max((len(k) for k in table), default=1))
        self.__dict__["_table_cache"] = (key, result)
        return result


_DEFAULT: list[Vocabulary] = []


def default_vocabulary() -> Vocabulary:
    """The shared :meth:`Vocabulary.synthetic` used when no vocabulary is given (built once)."""
    if not _DEFAULT:
        _DEFAULT.append(Vocabulary.synthetic())
    return _DEFAULT[0]
