"""Scene graphs: the ground truth a model's output is judged against.

A :class:`SceneGraph` holds objects (class name, attributes such as colour and size, a pixel box)
and binary relations between them. Relations can be given (real benchmarks) or derived from the
boxes (:meth:`SceneGraph.derive_relations`). The synthetic world produces these; benchmark
loaders map their annotations into them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

from lvlm_probe.errors import InputError

#: Geometric predicates derived from boxes, with their inverse.
GEOMETRIC_RELATIONS: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}


@dataclass
class SceneObject:
    """One object of a scene.

    Parameters
    ----------
    name : str
        Class name (e.g. ``"circle"`` or a COCO category).
    attributes : dict of str to str
        Attribute type -> value, e.g. ``{"color": "red", "size": "small"}``.
    box : tuple of 4 floats, optional
        ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
    """

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None

    @property
    def center(self) -> tuple[float, float]:
        """``(x, y)`` of the box centre."""
        if self.box is None:
            raise InputError(f"object {self.name!r} has no box; give box=(x0, y0, x1, y1) to use geometry")
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    def describe(self, order: Iterable[str] = ("size", "color")) -> str:
        """Attributes in ``order`` followed by the class name, e.g. ``"large red circle"``."""
        words = [self.attributes[a] for a in order if a in self.attributes]
        return " ".join([*words, self.name])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "attributes": dict(self.attributes),
                "box": list(self.box) if self.box is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneObject:
        if not isinstance(d, dict):
            raise InputError(f"scene object {d!r} is not an object; each is {{'name': ..., 'attributes': {{}}, "
                             "'box': [x0, y0, x1, y1]}}")
        if "name" not in d:
            raise InputError(f"scene object {d!r} has no 'name'; every object needs a class name")
        if not isinstance(d["name"], str) or not d["name"].strip():
            raise InputError(f"scene object {d!r}: 'name' must be a non-empty string")
        attrs = d.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise InputError(f"scene object {d['name']!r}: 'attributes' must be an object such as "
                             f"{{'color': 'red'}}, got {attrs!r}")
        box = d.get("box")
        if box is not None and not (isinstance(box, (list, tuple)) and len(box) == 4
                                    and all(_is_number(x) and math.isfinite(x) for x in box)):
            raise InputError(f"scene object {d['name']!r}: 'box' must be 4 finite numbers [x0, y0, x1, y1], "
                             f"got {box!r}")
        return cls(name=d["name"], attributes={str(k): str(v) for k, v in attrs.items()},
                   box=tuple(float(x) for x in box) if box is not None else None)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_index(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class Relation:
    """``objects[subject] <predicate> objects[object]``, e.g. ``0 "left of" 2``."""

    subject: int
    predicate: str
    object: int


@dataclass
class SceneGraph:
    """Objects and relations of one image.

    Parameters
    ----------
    objects : list of SceneObject
    relations : list of Relation
        Indices refer to ``objects``.
    width, height : int, optional
        Image size in pixels.
    """

    objects: list[SceneObject] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    width: int | None = None
    height: int | None = None

    # ---- queries -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Class names of the objects, in order."""
        return [o.name for o in self.objects]

    def has(self, name: str) -> bool:
        """Whether an object of class ``name`` is in the scene."""
        return any(o.name == name for o in self.objects)

    def find(self, name: str) -> list[int]:
        """Indices of the objects of class ``name``."""
        return [k for k, o in enumerate(self.objects) if o.name == name]

    def attribute_values(self, name: str, attribute: str) -> set[str]:
        """Values of ``attribute`` over the objects of class ``name``."""
        return {o.attributes[attribute] for o in self.objects if o.name == name and attribute in o.attributes}

    def holds(self, subject: str, predicate: str, obj: str) -> bool | None:
        """Whether some ``subject`` object stands in ``predicate`` to some ``obj`` object.

        Returns None when either class is absent (the question has no ground truth).
        """
        si, oi = self.find(subject), self.find(obj)
        if not si or not oi:
            return None
        rel = {(r.subject, r.predicate, r.object) for r in self.relations}
        return any((s, predicate, o) in rel for s in si for o in oi)

    # ---- construction ------------------------------------------------------------------------
    def derive_relations(self, margin: float = 0.0) -> SceneGraph:
        """Replace ``relations`` with the geometric ones implied by the boxes.

        ``a left of b`` holds when ``a``'s box ends (plus ``margin``) at or before ``b``'s box
        starts; ``above`` likewise on the vertical axis (image y grows downwards). A pair can hold
        one horizontal and one vertical relation, or none when the boxes overlap on both axes.
        """
        rels: list[Relation] = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j or a.box is None or b.box is None:
                    continue
                if a.box[2] + margin <= b.box[0]:
                    rels.append(Relation(i, "left of", j))
                if b.box[2] + margin <= a.box[0]:
                    rels.append(Relation(i, "right of", j))
                if a.box[3] + margin <= b.box[1]:
                    rels.append(Relation(i, "above", j))
                if b.box[3] + margin <= a.box[1]:
                    rels.append(Relation(i, "below", j))
        self.relations = rels
        return self

    # ---- tables and serialisation ------------------------------------------------------------
    def objects_frame(self) -> pd.DataFrame:
        """One row per object: ``index, name, <attribute columns>, x0, y0, x1, y1``."""
        rows = []
        for k, o in enumerate(self.objects):
            row: dict[str, Any] = {"index": k, "name": o.name, **o.attributes}
            if o.box is not None:
                row.update(dict(zip(("x0", "y0", "x1", "y1"), o.box)))
            rows.append(row)
        return pd.DataFrame(rows)

    def relations_frame(self) -> pd.DataFrame:
        """One row per relation: ``subject, predicate, object, subject_name, object_name``."""
        return pd.DataFrame(
            [{"subject": r.subject, "predicate": r.predicate, "object": r.object,
              "subject_name": self.objects[r.subject].name, "object_name": self.objects[r.object].name}
             for r in self.relations],
            columns=["subject", "predicate", "object", "subject_name", "object_name"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "objects": [o.to_dict() for o in self.objects],
                "relations": [[r.subject, r.predicate, r.object] for r in self.relations]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneGraph:
        """Inverse of :meth:`to_dict` (relations as ``[subject, predicate, object]`` triples)."""
        if not isinstance(d, dict) or "objects" not in d:
            raise InputError("a scene graph must be a dict with an 'objects' list (see SceneGraph.to_dict)")
        if not isinstance(d["objects"], list):
            raise InputError(f"'objects' must be a list of objects, got {type(d['objects']).__name__}")
        objs = [SceneObject.from_dict(o) for o in d["objects"]]
        rels = []
        raw = d.get("relations") or []
        if not isinstance(raw, list):
            raise InputError(f"'relations' must be a list of [subject, predicate, object] triples, got {raw!r}")
        for r in raw:
            if isinstance(r, dict) and {"subject", "predicate", "object"} <= set(r):
                s, p, o = r["subject"], r["predicate"], r["object"]
            elif isinstance(r, (list, tuple)) and len(r) == 3:
                s, p, o = r
            else:
                raise InputError(f"relation {r!r} is not a [subject, predicate, object] triple")
            if not (_is_index(s) and _is_index(o)) or not isinstance(p, str):
                raise InputError(f"relation {r!r}: subject and object must be object indices (integers) and the "
                                 "predicate a string")
            if not (0 <= s < len(objs) and 0 <= o < len(objs)):
                raise InputError(f"relation {r!r} refers to an object index outside 0..{len(objs) - 1}")
            rels.append(Relation(s, p, o))
        for key in ("width", "height"):
            v = d.get(key)
            if v is not None and (not _is_index(v) or v < 1):
                raise InputError(f"'{key}' must be a positive integer (pixels) or null, got {v!r}")
        return cls(objects=objs, relations=rels, width=d.get("width"), height=d.get("height"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> SceneGraph:
        return cls.from_dict(json.loads(text))
