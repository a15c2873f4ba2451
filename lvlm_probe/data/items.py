"""The `Item` record that flows through the pipeline, and robust image loading."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from PIL import Image, UnidentifiedImageError

from lvlm_probe.errors import InputError

ImageLike = Union[Image.Image, str, os.PathLike]


@dataclass
class Item:
    """One input: image(s), prompt and optional ground truth.

    Parameters
    ----------
    id : str
        Unique identifier; the activation store and every result table key on it.
    image : PIL.Image.Image, path, or a list of these
        The image(s). Paths are opened lazily by :func:`load_image`.
    prompt : str
        The question / instruction. With ``chat_template=True`` it is the bare user text; with
        ``chat_template=False`` it is the full prompt and must contain the family's image
        placeholder (e.g. ``<image>``) once per image.
    scene : SceneGraph, optional
        Ground-truth scene graph (objects, attributes, relations) that outputs are judged against.
    answer : str, optional
        Expected answer (QA items) or reference caption.
    task : str, optional
        Task kind: ``"caption"``, ``"exists"``, ``"attribute"``, ``"relation"`` or a benchmark's own.
    meta : dict, optional
        Anything else (benchmark split, question type, ...); must be JSON-serialisable to be kept
        in a store manifest.
    """

    id: str
    image: Any
    prompt: str
    scene: Any = None
    answer: str | None = None
    meta: dict = field(default_factory=dict)
    task: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            self.id = str(self.id)
        if self.meta is None:
            self.meta = {}
        if isinstance(self.scene, dict):
            from lvlm_probe.data.scene import SceneGraph

            self.scene = SceneGraph.from_dict(self.scene)

    def images(self) -> list[Image.Image]:
        """Load this item's images as RGB PIL images (a list, even for one image)."""
        raw = self.image if isinstance(self.image, (list, tuple)) else [self.image]
        return [load_image(im, item_id=self.id) for im in raw]


def load_image(image: ImageLike, *, item_id: str | None = None) -> Image.Image:
    """Open an image as RGB, with an error that names the item and the file.

    Parameters
    ----------
    image : PIL.Image.Image or path
    item_id : str, optional
        Used in error messages.

    Raises
    ------
    InputError
        The file is missing, unreadable or not an image.
    """
    who = f"item {item_id!r}: " if item_id is not None else ""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(
            f"{who}image must be a PIL image or a file path, got {type(image).__name__}; "
            "pass Item(image=PIL.Image.open(...)) or a path string"
        )
    path = Path(image)
    if not path.is_file():
        raise InputError(f"{who}image file {str(path)!r} does not exist; fix the path or drop the item")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(
            f"{who}image file {str(path)!r} is corrupt or not an image ({exc}); "
            "re-export it as PNG/JPEG or drop the item"
        ) from exc


def read_items(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> list[Item]:
    """Read items from a JSON-lines file.

    Each line is an object with ``id``, ``image`` (path, relative to ``image_root`` or to the
    file's folder), ``prompt`` and optionally ``answer``, ``task``, ``scene`` (a
    :meth:`SceneGraph.to_dict` object) and ``meta``.

    Returns
    -------
    list of Item
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    items: list[Item] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8-sig") as fh:  # a BOM (Windows editors) is not part of the JSON
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.strip())
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                                 "must be one JSON object") from None
            missing = [k for k in ("id", "image", "prompt") if k not in rec]
            if missing:
                raise InputError(f"{path}:{lineno}: missing field(s) {missing}; each line needs id, image, prompt")
            iid = str(rec["id"])
            if iid in seen:
                raise InputError(f"{path}:{lineno}: duplicate item id {iid!r}; ids must be unique")
            seen.add(iid)
            imgs = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
            imgs = [str(root / p) if not os.path.isabs(p) else p for p in imgs]
            items.append(
                Item(
                    id=iid,
                    image=imgs if len(imgs) > 1 else imgs[0],
                    prompt=rec["prompt"],
                    answer=rec.get("answer"),
                    meta=rec.get("meta") or {},
                    task=rec.get("task"),
                    scene=_scene_or_error(rec.get("scene"), path, lineno),
                )
            )
    return items


def _scene_or_error(scene: Any, path: Path, lineno: int) -> Any:
    if scene is None:
        return None
    from lvlm_probe.data.scene import SceneGraph

    try:
        return SceneGraph.from_dict(scene)
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}:{lineno}: bad 'scene' ({exc}); see SceneGraph.to_dict for the format") from exc


def check_unique_ids(items: Sequence[Item]) -> None:
    """Raise if two items share an id."""
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise InputError(f"item id {it.id!r} appears twice; ids must be unique (the store keys on them)")
        seen.add(it.id)
