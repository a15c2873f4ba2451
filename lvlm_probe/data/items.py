"""The `Item` record that flows through the pipeline, and robust image loading."""

from __future__ import annotations

import io
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
        if image.mode == "RGB":
            return image
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputError(f"{who}a PIL image of mode {image.mode!r} cannot be converted to RGB ({exc}); convert "
                             "it yourself (image.convert(...)) or re-export it as PNG/JPEG") from None
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(
            f"{who}image must be a PIL image or a file path, got {type(image).__name__}; "
            "pass Item(image=PIL.Image.open(...)) or a path string"
        )
    path = Path(image)
    if path.is_dir():
        raise InputError(f"{who}image path {str(path)!r} is a directory, not an image file; give the file's path")
    if not path.is_file():
        raise InputError(f"{who}image file {str(path)!r} does not exist; fix the path or drop the item")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{who}image file {str(path)!r} is too large to decode safely ({' '.join(str(exc).split())}); downscale "
            "it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{who}image file {str(path)!r} is corrupt or not an image ({' '.join(str(exc).split())}); "
            "re-export it as PNG/JPEG or drop the item"
        ) from exc


def read_items(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> list[Item]:
    """Read items from a JSON-lines file.

    Each line is an object with ``id``, ``image`` (path, relative to ``image_root`` or to the
    file's folder), ``prompt`` and optionally ``answer``, ``task``, ``scene`` (a
    :meth:`SceneGraph.to_dict` object) and ``meta``. UTF-8, with or without a BOM; LF or CRLF
    line ends; blank lines are skipped.

    Returns
    -------
    list of Item

    Raises
    ------
    InputError
        The file is missing, empty or not UTF-8, or a line is not one valid JSON object with the
        fields above (right types, unique ``id``, a valid scene); the message names ``FILE:LINE``.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give the items file (JSON lines) inside it")
    if not path.is_file():
        raise InputError(f"{path}: no such items file; check the path")
    root = Path(image_root) if image_root is not None else path.parent
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line.strip())
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                             "must be one JSON object") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read; flatten the record") from None
        if not isinstance(rec, dict):
            what = "a JSON array" if isinstance(rec, list) else type(rec).__name__
            raise InputError(f"{where}: expected one JSON object per line, found {what}; write JSON lines "
                             '({"id": ..., "image": ..., "prompt": ...} on each line)')
        missing = [k for k in ("id", "image", "prompt") if k not in rec]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}; each line needs id, image, prompt")
        iid = _field_id(rec["id"], where)
        if iid in seen:
            raise InputError(f"{where}: duplicate item id {iid!r} (first at line {seen[iid]}); ids must be unique")
        seen[iid] = lineno
        imgs = _field_images(rec["image"], where)
        imgs = [str(root / p) if not os.path.isabs(p) else p for p in imgs]
        prompt = rec["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: field 'prompt' must be a non-empty string, got {_show(prompt)}")
        for key in ("answer", "task"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise InputError(f"{where}: field '{key}' must be a string or null, got {_show(rec[key])}")
        if rec.get("meta") is not None and not isinstance(rec["meta"], dict):
            raise InputError(f"{where}: field 'meta' must be a JSON object or null, got {_show(rec['meta'])}")
        items.append(
            Item(
                id=iid,
                image=imgs if len(imgs) > 1 else imgs[0],
                prompt=prompt,
                answer=rec.get("answer"),
                meta=rec.get("meta") or {},
                task=rec.get("task"),
                scene=_scene_or_error(rec.get("scene"), path, lineno),
            )
        )
    if not items:
        raise InputError(f"{path}: no items (the file is empty); write one JSON object per line")
    return items


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file (a BOM dropped; LF, CRLF or CR line ends), naming the line of a
    byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the JSON
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {col}); save the "
                         "file as UTF-8") from None
    return list(enumerate(io.StringIO(text, newline=None), 1))


def _show(value: Any) -> str:
    """A JSON value for a message: its type and its text, cut short."""
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def _field_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise InputError(f"{where}: field 'id' must be a non-empty string or an integer, got {_show(value)}")
    return str(value)


def _field_images(value: Any, where: str) -> list[str]:
    imgs = value if isinstance(value, list) else [value]
    if not imgs or any(not isinstance(p, str) or not p.strip() for p in imgs):
        raise InputError(f"{where}: field 'image' must be a file path or a non-empty list of file paths, got "
                         f"{_show(value)}")
    return imgs


def _scene_or_error(scene: Any, path: Path, lineno: int) -> Any:
    if scene is None:
        return None
    from lvlm_probe.data.scene import SceneGraph

    try:
        return SceneGraph.from_dict(scene)
    except (InputError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"{path}:{lineno}: bad 'scene' ({' '.join(str(exc).split())}); see SceneGraph.to_dict for "
                         "the format") from exc


def check_unique_ids(items: Sequence[Item]) -> None:
    """Raise if an entry is not an :class:`Item` or two items share an id."""
    seen: set[str] = set()
    for k, it in enumerate(items):
        if not isinstance(it, Item):
            raise InputError(f"items[{k}] is a {type(it).__name__}, not an Item; build Item(id=..., image=..., "
                             "prompt=...) or read a file with lp.read_items(PATH)")
        if it.id in seen:
            raise InputError(f"item id {it.id!r} appears twice; ids must be unique (the store keys on them)")
        seen.add(it.id)
