"""Fuzz campaign (issue 23, item 5): seeded bad inputs over every surface a user feeds the toolkit.

Each case ends in one of two outcomes, and nothing else:

* **error** - an :class:`lvlm_probe.LvlmProbeError` subclass whose message is one line and names the offending
  item / file / line / key (the test asserts the substring);
* **per-item failure** - a batch API (``lp.capture``, ``generate_and_judge``) records the bad item with its
  reason and keeps every good item of the same call.

A few inputs are odd but valid (a BOM, CRLF line ends, a CMYK image, a 1x1 image); their cases assert that the
input is *read correctly* (outcome **ok**), so a fix never turns them into errors.

Layout: one ``cases_<surface>()`` generator per surface builds ``pytest.param`` s from a fixed seed, and one
``test_<surface>`` runs them. ``SURFACES`` maps each surface to its generator (``test_campaign_size`` counts
them). To add a surface (e.g. corrupted activation stores): write ``cases_<name>()`` returning params with ids
``"<name>/<what>"``, a ``test_<name>`` that uses :func:`project_error` / :func:`cli_error`, and register it in
``SURFACES``. docs/fuzz.md lists the surfaces and what a user sees for each.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import lvlm_probe as lp
from lvlm_probe.cli import main as cli_main
from lvlm_probe.errors import LvlmProbeError

SEED = 23
P = pytest.param


def _rng(surface: str) -> random.Random:
    """One seeded generator per surface, so adding cases to one surface never changes another's."""
    return random.Random(f"{SEED}/{surface}")


# ---- outcome checks ----------------------------------------------------------------------------------------
def project_error(fn: Callable[[], Any], *names: str, cls: type = LvlmProbeError) -> str:
    """Run ``fn``; it must raise ``cls`` (a project error) with a one-line message containing every name."""
    try:
        fn()
    except LvlmProbeError as exc:
        msg = str(exc)
        assert isinstance(exc, cls), f"{type(exc).__name__} instead of {cls.__name__}: {msg}"
        assert "\n" not in msg.strip(), f"message is not one line: {msg!r}"
        for n in names:
            assert str(n) in msg, f"message does not name {n!r}: {msg}"
        return msg
    except Exception as exc:  # noqa: BLE001 - the campaign's finding: an uncaught, unexplained error
        pytest.fail(f"uncaught {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    pytest.fail("no error raised for a bad input")


_PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")  # a progress bar of the libraries (tqdm), not a message
_RAW_CLASS = re.compile(r"^lvlm-probe: error: [A-Z]\w*(Error|Exception|Warning)\b")


def cli_error(capsys, argv: list[str], *names: str) -> str:
    """``lvlm-probe ARGV`` must exit 2 with one ``lvlm-probe: error: ...`` line naming every name (no traceback,
    no 'internal error', no bare Python exception class)."""
    capsys.readouterr()
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "internal error" not in err, err
    assert rc == 2, f"exit code {rc}: {err}"
    lines = [ln for ln in err.splitlines() if ln.strip() and not _PROGRESS.search(ln)]
    assert len(lines) == 1 and lines[0].startswith("lvlm-probe: error: "), err
    assert not _RAW_CLASS.match(lines[0]), f"a raw Python error, not a project error: {err}"
    for n in names:
        assert str(n) in err, f"stderr does not name {n!r}: {err}"
    return err


# ---- shared fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """ONE tiny LLaVA checkpoint for the whole module; broken model directories are cheap copies of it."""
    from lvlm_probe.models.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("fuzz_llava"), seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir, one_torch_thread):
    return lp.load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, one_torch_thread):
    from lvlm_probe.models.tiny import build_tiny_qwen2_5_vl

    return lp.load(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("fuzz_qwen"), seed=3), device="cpu")


def good_image(seed: int = 0, h: int = 24, w: int = 28) -> Image.Image:
    rs = np.random.RandomState(seed)
    return Image.fromarray((rs.rand(h, w, 3) * 255).astype("uint8"))


GOOD_SCENE = {"width": 64, "height": 64, "relations": [[0, "left of", 1]],
              "objects": [{"name": "circle", "attributes": {"color": "red"}, "box": [0, 0, 10, 10]},
                          {"name": "square", "attributes": {"color": "blue"}, "box": [20, 0, 30, 10]}]}


# =============================================================================================================
# Surface: images
# =============================================================================================================
def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (PIL refuses it before decoding: a decompression bomb)."""
    data = bytearray(_png_bytes(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


#: Image kinds a model cannot read: the error names the item and the file.
BAD_IMAGE_KINDS = ["missing", "zero_png", "zero_jpg", "directory", "text_as_png", "html_as_jpg", "bomb",
                   "bad_type_int", "bad_type_bytes", "bad_type_dict", "pil_mode_La"]
#: Odd but readable images: converted to RGB at their size.
ODD_IMAGE_MODES = ["CMYK", "P", "LA", "I;16", "1", "L", "RGBA", "I", "F", "PA", "YCbCr", "HSV", "LAB", "RGBX"]
ODD_IMAGE_SIZES = [(1, 1), (1, 5000), (5000, 1), (2, 3000), (3, 1)]


def cases_images() -> list:
    rng = _rng("images")
    out = [P(("bad", k, None), id=f"images/{k}") for k in BAD_IMAGE_KINDS]
    for fmt in ("png", "jpg"):
        for k in range(8):
            out.append(P(("bad", f"truncated_{fmt}", round(rng.uniform(0.02, 0.85), 3)), id=f"images/truncated_{fmt}-{k}"))
    for k in range(5):
        out.append(P(("bad", "random_bytes", rng.randrange(1, 4096)), id=f"images/random_bytes-{k}"))
    out += [P(("ok", "mode", m), id=f"images/mode-{m}") for m in ODD_IMAGE_MODES]
    out += [P(("ok", "mode_file", m), id=f"images/mode_file-{m}") for m in ("CMYK", "P", "LA", "I;16", "1", "RGBA")]
    out += [P(("ok", "size", s), id=f"images/size-{s[0]}x{s[1]}") for s in ODD_IMAGE_SIZES]
    return out


def make_image(kind: str, arg: Any, tmp: Path) -> Any:
    """The image argument of one kind (a path, a PIL image or a wrong Python object)."""
    if kind == "missing":
        return str(tmp / "no_such_image.png")
    if kind == "zero_png":
        (tmp / "zero.png").write_bytes(b"")
        return str(tmp / "zero.png")
    if kind == "zero_jpg":
        (tmp / "zero.jpg").write_bytes(b"")
        return str(tmp / "zero.jpg")
    if kind == "directory":
        (tmp / "folder.png").mkdir(exist_ok=True)
        return str(tmp / "folder.png")
    if kind == "text_as_png":
        (tmp / "text.png").write_text("this is not an image\n")
        return str(tmp / "text.png")
    if kind == "html_as_jpg":
        (tmp / "page.jpg").write_text("<html><body>404 not found</body></html>")
        return str(tmp / "page.jpg")
    if kind == "bomb":
        (tmp / "bomb.png").write_bytes(_bomb_png(20000, 20000))
        return str(tmp / "bomb.png")
    if kind == "bad_type_int":
        return 42
    if kind == "bad_type_bytes":
        return _png_bytes(good_image())
    if kind == "bad_type_dict":
        return {"path": "a.png"}
    if kind == "pil_mode_La":
        return Image.new("La", (8, 8))
    if kind.startswith("truncated_"):
        fmt = kind.split("_")[1]
        data = _png_bytes(good_image(1, 64, 64), "PNG" if fmt == "png" else "JPEG")
        p = tmp / f"cut.{fmt}"
        p.write_bytes(data[: max(1, int(len(data) * arg))])
        return str(p)
    if kind == "random_bytes":
        p = tmp / "noise.png"
        p.write_bytes(bytes(random.Random(arg).randrange(256) for _ in range(arg)))
        return str(p)
    if kind == "mode":
        return Image.new(arg, (6, 5))
    if kind == "mode_file":
        p = tmp / f"mode.{'tif' if arg == 'CMYK' else 'png'}"
        Image.new(arg, (6, 5)).save(p)
        return str(p)
    if kind == "size":
        return Image.new("RGB", arg, (200, 10, 10))
    raise AssertionError(kind)


@pytest.mark.parametrize("spec", cases_images())
def test_images(spec, tmp_path):
    outcome, kind, arg = spec
    image = make_image(kind, arg, tmp_path)
    if outcome == "ok":
        im = lp.load_image(image, item_id="odd")
        want = (6, 5) if kind.startswith("mode") else arg
        assert im.mode == "RGB" and im.size == want
        return
    names = ["'img-1'"]
    if isinstance(image, str):
        names.append(Path(image).name)
    project_error(lambda: lp.load_image(image, item_id="img-1"), *names, cls=lp.InputError)


#: (family, kind) pairs run through model.prepare in a batch [good, bad, good]
PREPARE_IMAGE_KINDS = ["missing", "truncated_png", "bomb", "pil_mode_La", "bad_type_int", "size"]


def cases_image_batches() -> list:
    out = []
    for fam in ("llava", "qwen"):
        for kind in PREPARE_IMAGE_KINDS:
            args = [0.3] if kind.startswith("truncated") else ODD_IMAGE_SIZES if kind == "size" else [None]
            for a in args:
                out.append(P((fam, kind, a), id=f"image_batches/{fam}-{kind}" + (f"-{a[0]}x{a[1]}" if kind == "size" else "")))
    return out


@pytest.mark.parametrize("spec", cases_image_batches())
def test_image_batches(spec, request, tmp_path):
    """A bad image in a batch: prepare names the item (or, for an odd but readable image, keeps all three)."""
    fam, kind, arg = spec
    model = request.getfixturevalue("tiny" if fam == "llava" else "tiny_qwen")
    bad = make_image(kind, arg, tmp_path)
    images, ids = [good_image(0), bad, good_image(1)], ["good-0", "bad-one", "good-1"]
    call = lambda: model.prepare(images, ["what is this ?"] * 3, item_ids=ids)  # noqa: E731
    if kind == "size":
        try:
            batch = call()
        except lp.InputError as exc:  # a processor that cannot take this aspect ratio: the item is named
            assert "'bad-one'" in str(exc) and "\n" not in str(exc), str(exc)
            return
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"uncaught {type(exc).__name__}: {exc}")
        assert batch.item_ids == ids and min(batch.n_image_tokens) > 0
        return
    project_error(call, "'bad-one'", cls=lp.InputError)


# =============================================================================================================
# Surface: prompts
# =============================================================================================================
def cases_prompts() -> list:
    rng = _rng("prompts")
    words = "what is in the image ? a red circle left of".split()
    huge = " ".join(rng.choice(words) for _ in range(3000))
    out = []
    chat = {"empty": "", "space": "   ", "tabs_newlines": "\t\n \r\n", "nul_only": "\x00", "nul_inside": "what is\x00 this ?",
            "nul_end": "what is this ?\x00", "huge": huge, "huge_dots": ". " * 2000,
            "placeholder_in_chat": "<image> what is this ?", "two_placeholders_in_chat": "<image><image> what ?",
            "none": None, "int": 7, "float": 1.5, "bytes": b"what is this ?", "list": ["what is this ?"],
            "dict": {"text": "what"}}
    for name, p in chat.items():
        out.append(P(("chat", p, 1), id=f"prompts/chat-{name}"))
    raw = {"no_placeholder": ("what is this ?", 1), "two_for_one": ("<image> <image> what is this ?", 1),
           "three_for_one": ("<image><image><image> what ?", 1), "one_for_two": ("<image> what is this ?", 2),
           "none_for_two": ("what is this ?", 2), "only_placeholder": ("<image>", 1),
           "placeholder_and_space": ("<image>   ", 1), "nul_raw": ("<image> what\x00 ?", 1)}
    for name, (p, n) in raw.items():
        out.append(P(("raw", p, n), id=f"prompts/raw-{name}"))
    for k in range(6):  # seeded placeholder counts that disagree with the number of images
        n_img = rng.randint(1, 3)
        n_ph = rng.choice([c for c in range(5) if c != n_img])
        out.append(P(("raw", "<image> " * n_ph + "what is this ?", n_img), id=f"prompts/raw-{n_ph}_for_{n_img}-{k}"))
    return out


@pytest.mark.parametrize("spec", cases_prompts())
def test_prompts(spec, tiny):
    mode, prompt, n_img = spec
    images = [good_image(0), [good_image(k) for k in range(n_img)], good_image(2)]
    prompts = ["what is this ?", prompt, "what is this ?"] if mode == "chat" else \
        ["<image> what is this ?", prompt, "<image> what is this ?"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown words are a warning of their own (test_errors)
        project_error(lambda: tiny.prepare(images, prompts, item_ids=["good-0", "bad-prompt", "good-2"],
                                           chat_template=mode == "chat"), "'bad-prompt'", cls=lp.InputError)


# =============================================================================================================
# Surface: items files (lp.read_items)
# =============================================================================================================
def _rec(**kw: Any) -> dict:
    return {**{"id": "x", "image": "x.png", "prompt": "what is this ?", "scene": GOOD_SCENE}, **kw}


def _good_lines(n: int, start: int = 0) -> list[str]:
    return [json.dumps(_rec(id=f"i{k}", image=f"i{k}.png")) for k in range(start, start + n)]


def _corrupt_json(line: str, rng: random.Random) -> str:
    """A seeded syntax error in one JSON line (re-drawn until the result no longer parses)."""
    for _ in range(100):
        how = rng.choice(["cut", "insert", "drop", "quote", "comma", "nul"])
        k = rng.randrange(1, len(line) - 1)
        if how == "cut":
            bad = line[:k]
        elif how == "insert":
            bad = line[:k] + rng.choice(["{", "[", "\"", ":", "}", "]"]) + line[k:]
        elif how == "drop":
            bad = line[:k] + line[k + 1:]
        elif how == "quote":
            bad = line.replace('"', "'", 1 + rng.randrange(4))
        elif how == "comma":
            bad = line[:-1] + ",}"
        else:
            j = line.index('"prompt": "') + 11
            bad = line[:j] + "\x00" + line[j:]
        try:
            json.loads(bad)
        except ValueError:
            return bad
    raise AssertionError("could not corrupt the line")


#: Field -> wrong JSON values (each case: one record with that value; the message names the field).
WRONG_TYPES: dict[str, list] = {
    "id": [None, {}, [], ["a"], 1.5, True, "", "   "],
    "image": [5, None, {}, [], [5], [None], True, "", ["a.png", ""]],
    "prompt": [5, None, [], {}, True, ["what"], "", "  \n"],
    "answer": [5, [], {"a": 1}, True],
    "task": [5, [], {}, True],
    "meta": [[], "x", 5, True],
}
#: Bad scene graphs: (label, scene value).
BAD_SCENES: list[tuple[str, Any]] = [
    ("string", "circle left of square"), ("number", 5), ("list", []), ("no_objects", {"relations": []}),
    ("objects_number", {"objects": 5}), ("objects_string", {"objects": "circle"}),
    ("object_string", {"objects": ["circle"]}), ("object_name_key", {"objects": ["name"]}),
    ("object_no_name", {"objects": [{"attributes": {}}]}), ("object_name_null", {"objects": [{"name": None}]}),
    ("attributes_list", {"objects": [{"name": "a", "attributes": ["red"]}]}),
    ("attributes_string", {"objects": [{"name": "a", "attributes": "red"}]}),
    ("box_short", {"objects": [{"name": "a", "box": [1, 2, 3]}]}),
    ("box_string", {"objects": [{"name": "a", "box": "abcd"}]}),
    ("box_words", {"objects": [{"name": "a", "box": ["a", "b", "c", "d"]}]}),
    ("box_number", {"objects": [{"name": "a", "box": 7}]}),
    ("box_inf", {"objects": [{"name": "a", "box": [0, 0, 1e400, 1]}]}),
    ("relations_number", {"objects": [{"name": "a"}], "relations": 5}),
    ("relation_number", {"objects": [{"name": "a"}], "relations": [5]}),
    ("relation_short", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0, "left of"]]}),
    ("relation_long", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0, "left of", 1, 2]]}),
    ("relation_words", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [["a", "left of", "b"]]}),
    ("relation_float", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0.5, "left of", 1]]}),
    ("relation_bool", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[True, "left of", 0]]}),
    ("relation_huge", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0, "left of", 10 ** 30]]}),
    ("relation_inf", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0, "left of", 1e400]]}),
    ("relation_dict_missing", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [{"subject": 0}]}),
    ("relation_predicate_null", {"objects": [{"name": "a"}, {"name": "b"}], "relations": [[0, None, 1]]}),
    ("width_string", {"objects": [{"name": "a"}], "width": "wide"}),
    ("height_negative", {"objects": [{"name": "a"}], "height": -3}),
]


def cases_items() -> list:
    rng = _rng("items")
    out = []
    # syntax errors on a seeded line among good ones (blank lines before it still count as lines)
    for k in range(22):
        n_before = rng.randrange(0, 4)
        lines = _good_lines(n_before)
        if rng.random() < 0.3:
            lines.insert(rng.randrange(0, len(lines) + 1), "")
        bad_at = len(lines) + 1
        lines.append(_corrupt_json(json.dumps(_rec(id="bad")), rng))
        lines += _good_lines(rng.randrange(0, 3), start=10)
        out.append(P(("error", "\n".join(lines) + "\n", [f":{bad_at}:"]), id=f"items/syntax-{k}"))
    for name, val in {"number": "5", "string": '"item"', "null": "null", "true": "true", "list": '["a", "b"]',
                      "array_of_records": json.dumps([_rec(id="a"), _rec(id="b")])}.items():
        text = "\n".join([*_good_lines(1), val, *_good_lines(1, start=5)]) + "\n"
        out.append(P(("error", text, [":2:", "object"]), id=f"items/not_an_object-{name}"))
    pretty = json.dumps([_rec(id="a")], indent=2)
    out.append(P(("error", pretty, [":1:"]), id="items/pretty_json_array"))
    for key in ("id", "image", "prompt"):
        rec = _rec(id="m")
        del rec[key]
        out.append(P(("error", json.dumps(rec) + "\n", [":1:", key]), id=f"items/missing-{key}"))
    for key, vals in WRONG_TYPES.items():
        for j, v in enumerate(vals):
            line = json.dumps(_rec(**{"id": "w", key: v}))
            out.append(P(("error", "\n".join([*_good_lines(2), line]) + "\n", [":3:", f"'{key}'"]),
                         id=f"items/wrong_type-{key}-{j}"))
    for label, scene in BAD_SCENES:
        line = json.dumps(_rec(id="s", scene=scene))
        out.append(P(("error", _good_lines(1)[0] + "\n" + line + "\n", [":2:", "'scene'"]), id=f"items/scene-{label}"))
    for k in range(6):  # relation indices out of range, seeded
        n_obj = rng.randint(1, 3)
        bad = rng.choice([-1 - rng.randrange(3), n_obj + rng.randrange(3)])
        rel = [0, "left of", bad] if rng.random() < 0.5 else [bad, "above", 0]
        scene = {"objects": [{"name": f"o{j}"} for j in range(n_obj)], "relations": [rel]}
        out.append(P(("error", json.dumps(_rec(id="r", scene=scene)) + "\n", [":1:", "'scene'", str(bad)]),
                     id=f"items/scene_out_of_range-{k}"))
    for k in range(5):  # duplicate ids at seeded positions
        n = rng.randint(2, 6)
        lines = _good_lines(n)
        j = rng.randrange(1, n)
        first = rng.randrange(0, j)
        lines[j] = json.dumps(_rec(id=f"i{first}"))
        out.append(P(("error", "\n".join(lines) + "\n", [f":{j + 1}:", f"'i{first}'"]), id=f"items/duplicate_id-{k}"))
    out.append(P(("error", json.dumps(_rec(id=1)) + "\n" + json.dumps(_rec(id="1")) + "\n", [":2:", "'1'"]),
                 id="items/duplicate_id-int_and_str"))
    # encodings
    good2 = "\n".join(_good_lines(2)) + "\n"
    out.append(P(("ok", b"\xef\xbb\xbf" + good2.encode(), ["i0", "i1"]), id="items/bom"))
    out.append(P(("ok", good2.replace("\n", "\r\n").encode(), ["i0", "i1"]), id="items/crlf"))
    out.append(P(("ok", ("\n\n  \n" + good2.replace("\n", "\n \t\n")).encode(), ["i0", "i1"]), id="items/blank_lines"))
    out.append(P(("ok", (json.dumps(_rec(id=10 ** 40)) + "\n").encode(), [str(10 ** 40)]), id="items/huge_int_id"))
    out.append(P(("ok", (json.dumps(_rec(id="é✓", prompt="what is this ?")) + "\n").encode(), ["é✓"]),
                 id="items/unicode_id"))
    out.append(P(("error", b"\xef\xbb\xbf" + good2.encode() + b"{\"id\": \n", [":3:"]), id="items/bom_then_bad_line"))
    out.append(P(("error", good2.replace("\n", "\r\n").encode() + b"{oops}\r\n", [":3:"]), id="items/crlf_then_bad_line"))
    for k in range(5):
        lines = _good_lines(3)
        j = rng.randrange(3)
        enc = [ln.encode() for ln in lines]
        pos = enc[j].index(b"what")
        enc[j] = enc[j][:pos] + bytes([rng.randrange(0x80, 0x100)]) + enc[j][pos:]
        out.append(P(("error", b"\n".join(enc) + b"\n", [f":{j + 1}:", "UTF-8"]), id=f"items/not_utf8-{k}"))
    out.append(P(("error", good2.encode("utf-16"), [":1:", "UTF-8"]), id="items/utf16"))
    out.append(P(("error", b"\x00\x01\x02\xff\xfe binary", [":1:"]), id="items/binary"))
    for depth in (2_000, 100_000):
        line = '{"id": "deep", "image": "a.png", "prompt": "p", "meta": {"x": ' + "[" * depth + "]" * depth + "}}"
        out.append(P(("error", _good_lines(1)[0] + "\n" + line + "\n", [":2:"]), id=f"items/deep_nesting-{depth}"))
    out.append(P(("error", "", ["no items"]), id="items/empty_file"))
    out.append(P(("error", "\n  \n\r\n", ["no items"]), id="items/blank_file"))
    out.append(P(("error", None, ["no_such_items.jsonl"]), id="items/missing_file"))
    out.append(P(("error", "DIR", ["items_dir"]), id="items/directory"))
    return out


@pytest.mark.parametrize("spec", cases_items())
def test_items(spec, tmp_path):
    outcome, content, expect = spec
    path = tmp_path / "items.jsonl"
    if content is None:
        path = tmp_path / "no_such_items.jsonl"
    elif content == "DIR":
        path = tmp_path / "items_dir"
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    if outcome == "ok":
        items = lp.read_items(path)
        assert [it.id for it in items] == expect
        assert all(isinstance(it.scene, lp.SceneGraph) and it.prompt == "what is this ?" for it in items)
        return
    project_error(lambda: lp.read_items(path), path.name, *expect, cls=lp.InputError)


# =============================================================================================================
# Surface: items given to a diagnosis (tracing.run.check_items / generate_and_judge)
# =============================================================================================================
def _item(iid: str, **kw: Any) -> Any:
    return lp.Item(**{"id": iid, "image": good_image(0), "prompt": "describe the image .", "scene": GOOD_SCENE,
                      **kw})


def cases_diagnose_items() -> list:
    return [P(k, id=f"diagnose_items/{k}") for k in
            ("empty", "none", "duplicate", "no_scene", "dict_entry", "string_entry", "none_entry", "scene_string",
             "scene_list", "string_items", "generator_empty")]


@pytest.mark.parametrize("kind", cases_diagnose_items())
def test_diagnose_items(kind):
    from lvlm_probe.tracing.run import check_items

    good = [_item("g0"), _item("g1")]
    cases: dict[str, tuple[Any, list[str]]] = {
        "empty": ([], ["at least one item"]),
        "none": (None, ["items"]),
        "duplicate": ([*good, _item("g1")], ["'g1'"]),
        "no_scene": ([*good, _item("ns", scene=None)], ["'ns'", "scene"]),
        "dict_entry": ([*good, {"id": "d", "image": "a.png", "prompt": "p"}], ["2", "Item", "dict"]),
        "string_entry": ([*good, "a.png"], ["2", "Item", "str"]),
        "none_entry": ([good[0], None], ["1", "Item", "NoneType"]),
        "scene_string": ([*good, _item("ss", scene="a circle")], ["'ss'", "scene"]),
        "scene_list": ([*good, _item("sl", scene=[1, 2])], ["'sl'", "scene"]),
        "string_items": ("items.jsonl", ["str", "read_items"]),
        "generator_empty": ((x for x in []), ["at least one item"]),
    }
    items, names = cases[kind]
    project_error(lambda: check_items(items), *names, cls=lp.InputError)


@pytest.fixture(scope="module")
def bad_items(tmp_path_factory):
    """Items with one bad input each (image or prompt), for the batch APIs."""
    tmp = tmp_path_factory.mktemp("fuzz_bad_items")
    bad: dict[str, Any] = {}
    for kind in ("missing", "zero_png", "directory", "text_as_png", "bomb", "bad_type_int", "pil_mode_La"):
        d = tmp / kind
        d.mkdir()
        bad[f"img-{kind}"] = {"image": make_image(kind, None, d)}
    d = tmp / "cut"
    d.mkdir()
    bad["img-truncated_png"] = {"image": make_image("truncated_png", 0.4, d)}
    for name, p in {"empty": "", "space": "  ", "nul": "what\x00 ?", "int": 5, "none": None,
                    "placeholder": "<image> what ?", "huge": "what is " * 400}.items():
        bad[f"prompt-{name}"] = {"prompt": p}
    return bad


def cases_batch_failures() -> list:
    kinds = ["img-missing", "img-zero_png", "img-directory", "img-text_as_png", "img-bomb", "img-bad_type_int",
             "img-pil_mode_La", "img-truncated_png", "prompt-empty", "prompt-space", "prompt-nul", "prompt-int",
             "prompt-none", "prompt-placeholder", "prompt-huge"]
    return [P(k, id=f"batch_failures/capture-{k}") for k in kinds] + \
        [P(k, id=f"batch_failures/generate_and_judge-{k}") for k in kinds[::2]]


@pytest.fixture(scope="module")
def capture_run(tiny, bad_items, tmp_path_factory):
    """ONE capture of good and bad items interleaved (batch size 4): every bad one recorded, every good one kept."""
    items = []
    for k, (iid, kw) in enumerate(bad_items.items()):
        items.append(_item(f"good-{k}", image=good_image(k)))
        items.append(_item(iid, **kw))
    out = tmp_path_factory.mktemp("fuzz_capture") / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = lp.capture(tiny, items, sites=["llm.resid_post.1"], select=["last_prompt"], out=out, batch_size=4,
                           progress=False)
    return store, [it.id for it in items]


@pytest.fixture(scope="module")
def judge_run(tiny, bad_items):
    from lvlm_probe.tracing import DiagnoseConfig, generate_and_judge

    items = []
    for k, (iid, kw) in enumerate(bad_items.items()):
        items.append(_item(f"good-{k}", image=good_image(k)))
        items.append(_item(iid, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return generate_and_judge(tiny, items, DiagnoseConfig(max_new_tokens=2, batch_size=4), progress=False), items


@pytest.mark.parametrize("kind", cases_batch_failures())
def test_batch_failures(kind, request):
    """Per-item failure: the bad item is recorded with a reason that names it; every good item is kept."""
    api = request.node.callspec.id.split("/")[1].split("-")[0]
    if api == "capture":
        store, ids = request.getfixturevalue("capture_run")
        failed, kept = store.failed, set(store.item_ids)
    else:
        run, items = request.getfixturevalue("judge_run")
        ids = [it.id for it in items]
        failed = run.failed
        kept = set(run.generations.loc[run.generations.failed.isna(), "item_id"])
    goods = {i for i in ids if i.startswith("good-")}
    assert goods <= kept, f"good items lost: {sorted(goods - kept)}"
    assert kind in failed and kind not in kept, f"{kind} not recorded as failed: {failed}"
    why = failed[kind]
    assert f"'{kind}'" in why and "\n" not in why and why.split(":")[0] in ("InputError", "ModelLoadError"), why


# =============================================================================================================
# Surface: capture arguments
# =============================================================================================================
#: (label, kwargs that override a good call, substrings the error names)
CAPTURE_ARGS: list[tuple[str, dict, list[str]]] = [
    ("site_layer_too_high", {"sites": ["llm.resid_post.99"]}, ["llm.resid_post.99"]),
    ("site_vision_layer_too_high", {"sites": ["vision.resid_post.7"]}, ["vision.resid_post.7"]),
    ("site_negative", {"sites": ["llm.resid_post.-1"]}, ["llm.resid_post.-1"]),
    ("site_unknown", {"sites": ["llm.mlp_banana.0"]}, ["llm.mlp_banana.0"]),
    ("site_word", {"sites": ["everything"]}, ["everything"]),
    ("site_empty_string", {"sites": [""]}, ["''"]),
    ("site_wildcard_unknown", {"sites": ["llm.nothing.*"]}, ["llm.nothing.*"]),
    ("site_twice", {"sites": ["llm.resid_post.0", "llm.resid_post.0"]}, ["llm.resid_post.0"]),
    ("site_none", {"sites": [None]}, ["None"]),
    ("site_int", {"sites": [3]}, ["3"]),
    ("select_unknown", {"select": ["everything"]}, ["everything"]),
    ("select_not_for_site", {"sites": ["vision.resid_post.0"], "select": ["last_prompt"]}, ["vision.resid_post.0"]),
    ("select_generated_no_generate", {"select": ["generated"]}, ["generated"]),
    ("batch_size_zero", {"batch_size": 0}, ["batch_size"]),
    ("batch_size_negative", {"batch_size": -2}, ["batch_size"]),
    ("batch_size_float", {"batch_size": 1.5}, ["batch_size"]),
    ("batch_size_string", {"batch_size": "8"}, ["batch_size"]),
    ("batch_size_bool", {"batch_size": True}, ["batch_size"]),
    ("batch_size_none", {"batch_size": None}, ["batch_size"]),
    ("generate_zero", {"generate": 0}, ["generate"]),
    ("generate_negative", {"generate": -5}, ["generate"]),
    ("generate_string", {"generate": "10"}, ["generate"]),
    ("generate_bool", {"generate": True}, ["generate"]),
    ("generate_float", {"generate": 2.5}, ["generate"]),
    ("dtype_int", {"dtype": "int8"}, ["int8"]),
    ("dtype_unknown", {"dtype": "float99"}, ["float99"]),
    ("dtype_torch_int", {"dtype": torch.int64}, ["int64"]),
    ("items_duplicate", {"items": "dup"}, ["'g0'"]),
    ("sites_empty", {"sites": []}, ["sites"]),
    ("select_empty", {"select": []}, ["select"]),
    ("select_string", {"select": "last_prompt"}, ["last_prompt"]),
    ("shard_items_zero", {"shard_items": 0}, ["shard_items"]),
    ("shard_items_negative", {"shard_items": -3}, ["shard_items"]),
    ("shard_items_string", {"shard_items": "many"}, ["shard_items"]),
    ("shard_items_float", {"shard_items": 2.5}, ["shard_items"]),
    ("items_empty", {"items": "empty"}, ["item"]),
    ("items_dicts", {"items": "dicts"}, ["Item"]),
    ("out_is_file", {"out": "file"}, ["a_file.txt"]),
    ("out_under_file", {"out": "under_file"}, ["a_file.txt"]),
]
def cases_capture_args() -> list:
    out = []
    for label, kw, names in CAPTURE_ARGS:
        out.append(P((kw, names), id=f"capture_args/{label}"))
    return out


@pytest.mark.parametrize("spec", cases_capture_args())
def test_capture_args(spec, tiny, tmp_path):
    kw, names = spec
    items = [_item("g0"), _item("g1")]
    args: dict[str, Any] = {"sites": ["llm.resid_post.0"], "select": ["last_prompt"], "out": tmp_path / "store",
                            "progress": False, **kw}
    if args.get("items") == "dup":
        items = [*items, _item("g0")]
    elif args.get("items") == "empty":
        items = []
    elif args.get("items") == "dicts":
        items = [{"id": "d0", "image": good_image(0), "prompt": "what is this ?"}]
    args.pop("items", None)
    if args["out"] in ("file", "under_file"):
        (tmp_path / "a_file.txt").write_text("x")
        args["out"] = tmp_path / "a_file.txt" if args["out"] == "file" else tmp_path / "a_file.txt" / "store"
    project_error(lambda: lp.capture(tiny, items, **args), *names)


# =============================================================================================================
# Surface: `lvlm-probe eval` inputs (every benchmark's files)
# =============================================================================================================
def _jsonl(recs: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def bench_files() -> dict[str, dict]:
    """A small valid run of each benchmark: files (name -> (text, required keys, shape)) and the argv."""
    pope_q = [{"question_id": k, "image": f"im{k // 2}.jpg", "text": f"Is there a dog {k}?",
               "label": "yes" if k % 2 else "no"} for k in range(1, 7)]
    pope_a = [{"question_id": k, "text": "Yes" if k % 3 else "No"} for k in range(1, 7)]
    amber_ann = [{"id": k, "type": "discriminative-hallucination", "truth": "yes" if k % 2 else "no"} for k in range(1, 5)]
    amber_ann += [{"id": 5, "type": "discriminative-attribute-state", "truth": "no"}]
    amber_resp = [{"id": k, "response": "Yes" if k % 2 else "No"} for k in range(1, 6)]
    rb_q = [{"question_id": k, "image": "a.jpg", "text": "t", "label": "yes" if k % 2 else "no"} for k in range(1, 5)]
    rb_a = [{"question_id": k, "text": "Yes"} for k in range(1, 5)]
    hb = [{"category": "VD", "subcategory": "illusion", "set_id": str(s), "figure_id": str(f), "question_id": "0",
           "visual_input": "1", "gt_answer": str((s + f) % 2), "model_prediction": "Yes" if f else "No"}
          for s in range(2) for f in range(2)]
    return {
        "pope": {"files": {"questions": ("coco_pope_random.json", _jsonl(pope_q), ["question_id", "text", "image", "label"],
                                         "jsonl"),
                           "answers": ("answers.jsonl", _jsonl(pope_a), ["question_id", "text"], "jsonl")},
                 "argv": ["eval", "pope", "--questions", "{questions}", "--answers", "{answers}", "--json"]},
        "amber": {"files": {"annotations": ("annotations.json", json.dumps(amber_ann, indent=4), ["id", "type", "truth"], "array"),
                            "responses": ("responses.json", json.dumps(amber_resp), ["id", "response"], "array")},
                  "argv": ["eval", "amber", "--annotations", "{annotations}", "--responses", "{responses}", "--json"]},
        "chair": {"files": {"captions": ("captions.json", json.dumps([{"image_id": 1, "caption": "a dog"}]),
                                         ["image_id", "caption"], "array"),
                            "ground_truth": ("gt.jsonl", _jsonl([{"image_id": 1, "objects": ["dog"]}]),
                                             ["image_id", "objects"], "jsonl"),
                            "synonyms": ("synonyms.txt", "dog, puppy\nperson, girl, boy\n", [], "text")},
                  "argv": ["eval", "chair", "--captions", "{captions}", "--ground-truth", "{ground_truth}",
                           "--synonyms", "{synonyms}", "--json"]},
        "rbench": {"files": {"questions": ("rbench_q.json", json.dumps(rb_q, indent=2), ["question_id", "label"], "array"),
                             "answers": ("rbench_a.jsonl", _jsonl(rb_a), ["question_id", "text"], "jsonl"),
                             "subsets": ("ids_1.json", json.dumps([1, 2, 3]), [], "idlist")},
                   "argv": ["eval", "rbench", "--questions", "{questions}", "--answers", "{answers}", "--subsets",
                            "{subsets}", "--json"]},
        "hallusionbench": {"files": {"results": ("HallusionBench.json", json.dumps(hb, indent=2),
                                                 ["category", "subcategory", "set_id", "figure_id", "question_id",
                                                  "gt_answer", "model_prediction"], "array")},
                           "argv": ["eval", "hallusionbench", "--results", "{results}", "--json"]},
    }


#: File-level corruptions, applied to every input file of every benchmark.
FILE_CORRUPTIONS = ["missing", "directory", "empty", "whitespace", "not_utf8", "truncated", "trailing_garbage",
                    "deep_nesting", "top_level_scalar", "record_not_object", "record_list", "binary"]
TEXT_CORRUPTIONS = ["missing", "directory", "empty", "not_utf8", "binary"]  # synonyms.txt is plain text


def _corrupt_file(text: str, shape: str, how: str, rng: random.Random) -> tuple[str | bytes | None, str]:
    """(new content, substring the message must hold besides the file name); None content: remove the file."""
    if how == "missing":
        return None, ""
    if how == "directory":
        return "DIR", ""
    if how == "empty":
        return "", ""
    if how == "whitespace":
        return "  \n\r\n\t\n", ""
    if how == "binary":
        return bytes([0, 159, 146, 150, 255, 0, 1]) * 3, ""
    if how == "not_utf8":
        data = text.encode()
        k = rng.randrange(0, max(1, len(data) // 2))
        return data[:k] + b"\xff\xfe\x80" + data[k:], "UTF-8"
    if how == "truncated":
        lines = text.rstrip("\n").split("\n")
        last = lines[-1] if shape == "jsonl" else text.rstrip()
        cut = rng.randrange(1, len(last) - 1)
        if shape == "jsonl":
            return "\n".join(lines[:-1] + [last[:cut]]) + "\n", f"line {len(lines)}"
        return text.rstrip()[:cut], "line"
    if how == "trailing_garbage":
        return text.rstrip("\n") + "\n}}} garbage\n", "line"
    if how == "deep_nesting":
        deep = "[" * 50_000 + "]" * 50_000
        if shape == "jsonl":
            return text + deep + "\n", f"line {text.count(chr(10)) + 1}"
        return deep, "line 1"
    if how == "top_level_scalar":
        return "42\n", "" if shape == "idlist" else "line 1"
    if how == "record_not_object":
        if shape == "jsonl":
            return text + '"just a string"\n', f"line {text.count(chr(10)) + 1}"
        if shape == "idlist":
            return json.dumps({"ids": [1, 2]}), ""
        return json.dumps(["just a string"]), "line 1"
    if how == "record_list":
        if shape == "jsonl":
            return text + "[1, 2]\n", f"line {text.count(chr(10)) + 1}"
        if shape == "idlist":
            return json.dumps("1,2,3"), ""
        return json.dumps([[1, 2]]), "line 1"
    raise AssertionError(how)


def _key_variants(recs_text: str, shape: str, keys: list[str], allowed: frozenset = frozenset()
                  ) -> list[tuple[str, str, str]]:
    """Per required key: the last record without it / with null / list / dict in its place (except the ``allowed``
    (key, variant) pairs a benchmark documents as valid)."""
    if not keys:
        return []
    if shape == "jsonl":
        recs = [json.loads(ln) for ln in recs_text.splitlines() if ln.strip()]
    else:
        recs = json.loads(recs_text)
    out = []
    for key in keys:
        for how, val in (("missing", None), ("null", None), ("list", [1]), ("dict", {"a": 1})):
            if (key, how) in allowed:
                continue
            bad = [dict(r) for r in recs]
            if how == "missing":
                del bad[-1][key]
            else:
                bad[-1][key] = val
            text = _jsonl(bad) if shape == "jsonl" else json.dumps(bad)
            line = len(bad) if shape == "jsonl" else 1
            out.append((f"{key}-{how}", text, f"line {line}"))
    return out


#: Variants a benchmark documents as valid: R-Bench questions may carry ``"label": null`` (scored as yes, as the
#: original's ``"no" in label`` test does).
VALID_VARIANTS: dict[tuple[str, str], frozenset] = {("rbench", "questions"): frozenset({("label", "null")})}


def cases_eval() -> list:
    rng = _rng("eval")
    out = []
    for bench, spec in bench_files().items():
        for role, (_fname, text, keys, shape) in spec["files"].items():
            for how in (TEXT_CORRUPTIONS if shape == "text" else FILE_CORRUPTIONS):
                content, must = _corrupt_file(text, shape, how, rng)
                out.append(P((bench, role, content, [must] if must else []), id=f"eval/{bench}-{role}-{how}"))
            for label, content, must in _key_variants(text, shape, keys, VALID_VARIANTS.get((bench, role), frozenset())):
                key = label.split("-")[0]
                out.append(P((bench, role, content, [must, f"'{key}'"]), id=f"eval/{bench}-{role}-key-{label}"))
    # mismatches between files, duplicates, zero-length inputs
    pq = bench_files()["pope"]["files"]["questions"][1]
    extra = [
        ("pope", "answers", _jsonl([{"question_id": 99, "text": "Yes"}]), ["line 1", "99"], "answer_unknown_id"),
        ("pope", "answers", _jsonl([{"question_id": 1, "text": "Yes"}, {"question_id": 1, "text": "No"}]),
         ["line 2", "1"], "answer_duplicate_id"),
        ("pope", "answers", _jsonl([{"question_id": 1, "text": "Yes"}]), ["question_id 2"], "answers_missing"),
        ("pope", "answers", _jsonl([{"text": "Yes"}]), ["1 answers", "6 questions"], "answers_no_ids_short"),
        ("pope", "questions", pq + pq.splitlines(True)[0], ["line 7", "1"], "question_duplicate_id"),
        ("pope", "questions", "[]", ["no questions"], "questions_empty_array"),
        ("pope", "answers", "[]", ["no answers"], "answers_empty_array"),
        ("pope", "questions", _jsonl([{"question_id": 1, "image": "a", "text": "t", "label": 1}]), ["line 1", "'label'"],
         "label_int"),
        ("amber", "responses", json.dumps([{"id": 77, "response": "Yes"}]), ["77"], "response_unknown_id"),
        ("amber", "responses", json.dumps([{"id": 1, "response": "Yes"}, {"id": 1, "response": "No"}]),
         ["line 1", "1"], "response_duplicate_id"),
        ("amber", "responses", "[]", ["no responses"], "responses_empty_array"),
        ("amber", "annotations", "[]", ["no annotations"], "annotations_empty_array"),
        ("amber", "annotations", json.dumps([{"id": 1, "type": "discriminative-hallucination", "truth": "maybe"}]),
         ["line 1", "'truth'"], "annotation_bad_truth"),
        ("rbench", "answers", _jsonl([{"question_id": 42, "text": "Yes"}]), ["42"], "answer_unknown_id"),
        ("rbench", "subsets", json.dumps([1, 77]), ["77"], "subset_unknown_id"),
        ("rbench", "questions", "[]", ["no questions"], "questions_empty_array"),
        ("hallusionbench", "results", "[]", ["no records"], "results_empty_array"),
        ("hallusionbench", "results", json.dumps([{**json.loads(bench_files()["hallusionbench"]["files"]["results"][1])[0],
                                                    "gt_answer": "yes"}]), ["line 1", "'gt_answer'"], "gt_answer_word"),
        ("hallusionbench", "results", json.dumps(json.loads(bench_files()["hallusionbench"]["files"]["results"][1])[:1] * 2),
         ["line 1", "duplicate"], "duplicate_question"),
        ("chair", "captions", json.dumps([{"image_id": 1.5, "caption": "a dog"}]), ["line 1", "'image_id'"],
         "image_id_float"),
        ("chair", "ground_truth", json.dumps({"1": "dog"}), ["'1'"], "gt_value_string"),
        ("chair", "synonyms", "dog\n", ["no synonyms"], "synonyms_one_word"),
    ]
    for bench, role, content, must, label in extra:
        out.append(P((bench, role, content, must), id=f"eval/{bench}-{label}"))
    return out


@pytest.mark.parametrize("spec", cases_eval())
def test_eval(spec, tmp_path, capsys):
    bench, role, content, must = spec
    files = bench_files()[bench]
    paths = {}
    for r, (fname, text, _, _) in files["files"].items():
        p = tmp_path / fname
        paths[r] = p
        if r != role:
            p.write_text(text, encoding="utf-8")
        elif content is None:
            pass
        elif content == "DIR":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8", newline="")
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in files["argv"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli_error(capsys, argv, paths[role].name, *must)


def test_eval_good_files_score(tmp_path, capsys):
    """The base files of the eval cases are valid: each benchmark scores them (CHAIR only needs NLTK to go on)."""
    for bench, files in bench_files().items():
        d = tmp_path / bench
        d.mkdir()
        paths = {r: d / f[0] for r, f in files["files"].items()}
        for r, (_, text, _, _) in files["files"].items():
            paths[r].write_text(text)
        argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in files["argv"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = cli_main(argv)
        io_ = capsys.readouterr()
        if bench == "chair" and rc == 2:
            assert "NLTK" in io_.err or "nltk" in io_.err, io_.err
            continue
        assert rc == 0, (bench, io_.err)
        assert json.loads(io_.out)


# =============================================================================================================
# Surface: model directories (lp.load)
# =============================================================================================================
def _st_header(path: Path) -> tuple[int, dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n]), data


def _edit_weights(path: Path, edit: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _first_key(tensors: dict, part: str) -> str:
    return sorted(k for k in tensors if part in k)[0]


def _mutate_model(kind: str, arg: Any, d: Path) -> tuple[Path, list[str], type]:
    """Break a copy ``d`` of the tiny checkpoint; returns (path to load, names the message holds, error class)."""
    st = d / "model.safetensors"
    cfg_p = d / "config.json"
    cfg = json.loads(cfg_p.read_text())
    if kind == "missing_config":
        cfg_p.unlink()
        return d, ["config.json"], lp.InputError
    if kind == "config_not_json":
        cfg_p.write_text("{ this is not json")
        return d, ["config.json"], lp.ModelLoadError
    if kind == "config_list":
        cfg_p.write_text("[1, 2, 3]")
        return d, ["config.json"], lp.ModelLoadError
    if kind == "config_not_utf8":
        cfg_p.write_bytes(b"\xff\xfe" + cfg_p.read_bytes())
        return d, ["config.json"], lp.ModelLoadError
    if kind == "config_empty":
        cfg_p.write_text("")
        return d, ["config.json"], lp.ModelLoadError
    if kind == "config_no_model_type":
        cfg.pop("model_type")
        cfg_p.write_text(json.dumps(cfg))
        return d, ["model_type"], lp.LvlmProbeError
    if kind == "config_unsupported":
        cfg_p.write_text(json.dumps({"model_type": arg, "architectures": ["SomethingElse"]}))
        return d, [repr(arg)], lp.UnsupportedModelError
    if kind == "config_unknown_type":
        cfg["model_type"] = "llava_banana"
        cfg_p.write_text(json.dumps(cfg))
        return d, ["llava_banana"], lp.LvlmProbeError
    if kind == "config_wrong_hidden":
        cfg["text_config"]["hidden_size"] = cfg["text_config"]["hidden_size"] * 2
        cfg_p.write_text(json.dumps(cfg))
        return d, ["shape"], lp.ModelLoadError
    if kind == "config_more_layers":
        cfg["text_config"]["num_hidden_layers"] += 1
        cfg_p.write_text(json.dumps(cfg))
        return d, ["missing"], lp.ModelLoadError
    if kind == "config_zero_heads":
        cfg["text_config"]["num_attention_heads"] = 0
        cfg_p.write_text(json.dumps(cfg))
        return d, ["config.json"], lp.ModelLoadError
    if kind == "missing_weights":
        st.unlink()
        return d, ["model.safetensors"], lp.ModelLoadError
    if kind == "zero_weights":
        st.write_bytes(b"")
        return d, ["model.safetensors"], lp.ModelLoadError
    if kind == "truncated_weights":
        data = st.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        cut = {"in_length": 4, "in_header": 8 + n // 2, "in_data": 8 + n + (len(data) - 8 - n) // 2}[arg[0]]
        cut = cut if arg[0] != "in_data" else cut + arg[1]
        st.write_bytes(data[:cut])
        return d, ["model.safetensors"], lp.ModelLoadError
    if kind == "header_garbage":
        n, _, data = _st_header(st)
        bad = bytearray(data)
        for k in arg:
            bad[8 + k % n] = ord("#")
        st.write_bytes(bytes(bad))
        # a broken header JSON names the file; a '#' inside a tensor name leaves that parameter missing (named)
        return d, [str(d)], lp.ModelLoadError
    if kind == "header_length_huge":
        data = st.read_bytes()
        st.write_bytes(struct.pack("<Q", 2 ** 40) + data[8:])
        return d, ["model.safetensors"], lp.ModelLoadError
    if kind == "not_safetensors":
        st.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
        return d, ["model.safetensors"], lp.ModelLoadError
    if kind == "missing_tensor":
        name: list[str] = []
        _edit_weights(st, lambda t: name.append(_first_key(t, arg)) or t.pop(name[0]))
        return d, ["missing"], lp.ModelLoadError
    if kind == "wrong_shape_tensor":
        name = []

        def grow(t: dict) -> None:
            name.append(_first_key(t, arg))
            t[name[0]] = torch.zeros(*[s + 1 for s in t[name[0]].shape])
        _edit_weights(st, grow)
        return d, ["shape"], lp.ModelLoadError
    if kind == "missing_tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).unlink()
        return d, ["tokenizer"], lp.ModelLoadError
    if kind == "corrupt_tokenizer":
        (d / "tokenizer.json").write_text("{ not json")
        return d, ["tokenizer"], lp.ModelLoadError
    if kind == "missing_image_processor":
        (d / "preprocessor_config.json").unlink()
        (d / "processor_config.json").unlink()
        return d, ["image processor"], lp.ModelLoadError
    if kind == "corrupt_image_processor":
        (d / "preprocessor_config.json").write_text("[not json")
        return d, ["preprocessor_config.json"], lp.ModelLoadError
    if kind == "bad_run_defaults":
        (d / "run_defaults.json").write_text("{oops")
        return d, ["run_defaults.json"], lp.ModelLoadError
    if kind == "file_instead_of_dir":
        return st, ["model.safetensors"], lp.LvlmProbeError
    if kind == "empty_dir":
        for f in list(d.iterdir()):
            f.unlink()
        return d, ["config.json"], lp.InputError
    if kind == "no_such_path":
        return d / "nowhere", ["nowhere"], lp.ModelLoadError
    raise AssertionError(kind)


def cases_models() -> list:
    rng = _rng("models")
    kinds: list[tuple[str, Any, str]] = [
        ("missing_config", None, ""), ("config_not_json", None, ""), ("config_list", None, ""),
        ("config_not_utf8", None, ""), ("config_empty", None, ""), ("config_no_model_type", None, ""),
        ("config_unsupported", "bert", "bert"), ("config_unsupported", "gpt2", "gpt2"),
        ("config_unknown_type", None, ""), ("config_wrong_hidden", None, ""), ("config_more_layers", None, ""),
        ("config_zero_heads", None, ""), ("missing_weights", None, ""), ("zero_weights", None, ""),
        ("header_length_huge", None, ""), ("not_safetensors", None, ""),
        ("missing_tensor", "embed_tokens", "embed"), ("missing_tensor", "multi_modal_projector", "projector"),
        ("missing_tensor", "vision_tower", "vision"), ("wrong_shape_tensor", "lm_head", "lm_head"),
        ("wrong_shape_tensor", "multi_modal_projector", "projector"),
        ("missing_tokenizer", None, ""), ("corrupt_tokenizer", None, ""), ("missing_image_processor", None, ""),
        ("corrupt_image_processor", None, ""), ("bad_run_defaults", None, ""), ("file_instead_of_dir", None, ""),
        ("empty_dir", None, ""), ("no_such_path", None, ""),
    ]
    for where in ("in_length", "in_header", "in_data"):
        kinds.append(("truncated_weights", (where, rng.randrange(0, 64)), where))
    for k in range(3):
        kinds.append(("header_garbage", [rng.randrange(10_000) for _ in range(1 + k)], str(k)))
    return [P((kind, arg), id=f"models/{kind}" + (f"-{tag}" if tag else "")) for kind, arg, tag in kinds]


@pytest.mark.parametrize("spec", cases_models())
def test_models(spec, tiny_dir, tmp_path, one_torch_thread):
    kind, arg = spec
    d = tmp_path / "model"
    shutil.copytree(tiny_dir, d)
    target, names, cls = _mutate_model(kind, arg, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        project_error(lambda: lp.load(target, device="cpu"), *names, cls=cls)


def cases_cli() -> list:
    """The CLI over the same inputs: model directories, items files and capture settings."""
    out = [P(("info", k), id=f"cli/info-{k}") for k in ("missing_config", "config_unsupported", "missing_weights",
                                                         "zero_weights", "missing_tokenizer", "file_instead_of_dir")]
    out += [P(("capture_items", k), id=f"cli/capture-items-{k}") for k in ("syntax", "missing_file", "not_utf8",
                                                                            "wrong_type", "deep")]
    out += [P(("diagnose_items", k), id=f"cli/diagnose-items-{k}") for k in ("syntax", "scene", "duplicate")]
    out += [P(("capture_args", k), id=f"cli/capture-{k}") for k in ("site", "select", "batch_size", "dtype")]
    return out


_CLI_ITEMS = {"syntax": ('{"id": "a", "image": "a.png"\n', ":1:"),
              "missing_file": (None, "nope.jsonl"),
              "not_utf8": (b'{"id": "a\xff", "image": "a.png", "prompt": "p"}\n', ":1:"),
              "wrong_type": ('{"id": "a", "image": 5, "prompt": "p"}\n', "'image'"),
              "deep": ('{"id": "a", "image": "a.png", "prompt": "p", "meta": ' + "[" * 50_000 + "]" * 50_000 + "}\n",
                       ":1:"),
              "scene": ('{"id": "a", "image": "a.png", "prompt": "p", "scene": {"objects": [{"name": "a"}], '
                        '"relations": [[0, "left of", 3]]}}\n', "'scene'"),
              "duplicate": ('{"id": "a", "image": "a.png", "prompt": "p"}\n{"id": "a", "image": "a.png", "prompt": "p"}\n',
                            ":2:")}


@pytest.mark.parametrize("spec", cases_cli())
def test_cli(spec, tiny_dir, tmp_path, capsys, one_torch_thread):
    cmd, kind = spec
    if cmd == "info":
        d = tmp_path / "model"
        shutil.copytree(tiny_dir, d)
        target, names, _ = _mutate_model(kind, "bert", d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli_error(capsys, ["info", str(target), "--device", "cpu"], *names)
        return
    if cmd in ("capture_items", "diagnose_items"):
        content, must = _CLI_ITEMS[kind]
        f = tmp_path / ("items.jsonl" if content is not None else "nope.jsonl")
        if isinstance(content, bytes):
            f.write_bytes(content)
        elif content is not None:
            f.write_text(content)
        if cmd == "capture_items":
            argv = ["capture", "--model", str(tiny_dir), "--items", str(f), "--sites", "llm.resid_post.0", "--select",
                    "last_prompt", "--out", str(tmp_path / "store"), "--device", "cpu"]
        else:
            argv = ["diagnose", "--model", str(tiny_dir), "--items", str(f), "--out", str(tmp_path / "run"),
                    "--device", "cpu"]
        cli_error(capsys, argv, f.name, must)
        return
    items = tmp_path / "items.jsonl"
    good_image(0).save(tmp_path / "a.png")
    items.write_text(json.dumps({"id": "a", "image": "a.png", "prompt": "what is this ?"}) + "\n")
    base = {"site": ["--sites", "llm.resid_post.42"], "select": ["--select", "banana"],
            "batch_size": ["--batch-size", "0"], "dtype": ["--dtype", "int8"]}[kind]
    argv = ["capture", "--model", str(tiny_dir), "--items", str(items), "--out", str(tmp_path / "store"),
            "--device", "cpu", "--sites", "llm.resid_post.0", "--select", "last_prompt", *base]
    must = {"site": "llm.resid_post.42", "select": "banana", "batch_size": "batch_size", "dtype": "int8"}[kind]
    cli_error(capsys, argv, must)


# =============================================================================================================
# The campaign's size
# =============================================================================================================
SURFACES: dict[str, Callable[[], list]] = {
    "images": cases_images, "image_batches": cases_image_batches, "prompts": cases_prompts, "items": cases_items,
    "diagnose_items": cases_diagnose_items, "batch_failures": cases_batch_failures,
    "capture_args": cases_capture_args, "eval": cases_eval, "models": cases_models, "cli": cases_cli,
}


def test_campaign_size():
    counts = {name: len(fn()) for name, fn in SURFACES.items()}
    assert sum(counts.values()) >= 300, counts
    ids = [p.id for fn in SURFACES.values() for p in fn()]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert [p.id for p in cases_items()] == [p.id for p in cases_items()]  # seeded: the same cases every run
