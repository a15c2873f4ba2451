"""A small builder for self-contained HTML (and Markdown) reports: sections, figures, tables, example cards.

Everything is embedded (figures as base64 PNG or inline SVG, images as base64 PNG), every piece of user text is
HTML-escaped, and :meth:`Report.write` writes atomically (temp file in the target folder, then rename).

Examples
--------
>>> rep = Report("Diagnosis of organism:cooccurrence")
>>> s = rep.section("Summary", "64 captions, 31 errors; see `misalignments.csv`.")
>>> s.figure(plot_cause_bars(diag), "Causes per error kind")            # doctest: +SKIP
>>> s.table(diag, "Diagnoses", max_rows=20)                             # doctest: +SKIP
>>> obj = rep.section("Object errors").section("cooccurrence")
>>> obj.example(image, text, span=(28, 34), evidence={"p_no_image": 0.71})  # doctest: +SKIP
>>> rep.write("runs/diag/report.html")                                  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lvlm_probe._atomic import atomic_write_text
from lvlm_probe.errors import InputError

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.1rem}h4,h5,h6{font-size:1rem}
a.anchor{color:#aaa;text-decoration:none;margin-left:.3rem;font-weight:normal}
nav.toc{background:#f7f7f7;padding:.5rem 1rem;border-radius:4px}nav.toc ul{margin:.2rem 0;padding-left:1.2rem}
figure{margin:1rem 0}figure img,figure svg{max-width:100%;height:auto}figcaption{font-size:.9rem;color:#555}
table.df{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
table.df td,table.df th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
caption{caption-side:top;text-align:left;font-size:.9rem;color:#555;padding-bottom:.2rem}
p.note{font-size:.8rem;color:#777}
pre{background:#f7f7f7;padding:.5rem;overflow-x:auto;font-size:.8rem}
mark{background:#F0E442;font-weight:600;padding:0 1px}
div.card{display:flex;gap:1rem;border:1px solid #ddd;border-radius:4px;padding:.6rem;margin:.6rem 0}
div.card img{image-rendering:pixelated;flex:none;align-self:flex-start;border:1px solid #ccc}
div.card h4{margin:0 0 .3rem 0}div.card p.text{margin:.2rem 0 .5rem 0}
table.kv td{padding:0 .6rem 0 0;font-size:.85rem}table.kv td:first-child{color:#555}
footer{margin-top:3rem;font-size:.8rem;color:#999}
"""

_SLUG_RE = re.compile(r"[^a-z0-9]+")
_CODE_RE = re.compile(r"`([^`]+)`")


def _scoped_css(scope: str) -> str:
    """The report's styles limited to ``scope`` (so a notebook page keeps its own look); ``body`` is the scope."""
    def rule(m: re.Match) -> str:
        sels = [s.strip() for s in m.group(1).split(",")]
        return ",".join(scope if s == "body" else f"{scope} {s}" for s in sels) + "{" + m.group(2) + "}"

    return re.sub(r"([^{}]+)\{([^{}]*)\}", rule, _CSS.replace("\n", ""))


def slugify(title: str) -> str:
    """Anchor id of a title: lower case, runs of other characters as ``-`` (``"Object errors" -> "object-errors"``)."""
    return _SLUG_RE.sub("-", str(title).lower()).strip("-") or "section"


_BOLD_RE = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")


def _inline(text: str) -> str:
    """Escaped text with ``code`` spans as <code> and **bold** (Markdown) as <strong>."""
    out = _CODE_RE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(str(text)))
    return _BOLD_RE.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _paragraphs(text: str) -> str:
    parts = [p.strip() for p in re.split(r"\n\s*\n", str(text)) if p.strip()]
    return "".join(f"<p>{_inline(p)}</p>\n" for p in parts)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{float(v):.3g}"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return str(v)


def _merge_spans(spans: Any, n: int, where: str) -> list[tuple[int, int]]:
    if spans is None:
        return []
    if len(spans) == 2 and all(isinstance(v, (int, np.integer)) for v in spans):
        spans = [spans]
    out = []
    for sp in spans:
        try:
            a, b = (int(v) for v in sp)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: span {sp!r} is not (start, end) character offsets") from e
        if not 0 <= a <= b <= n:
            raise InputError(f"{where}: span ({a}, {b}) is outside the text ({n} characters); spans are character "
                             f"offsets into the full text")
        out.append((a, b))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(out):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def highlight(text: str, spans: Any = None, *, markdown: bool = False) -> str:
    """``text`` HTML-escaped, with the character ``spans`` (one ``(start, end)`` or a list) in <mark> (or ``**``).

    Markdown output is HTML-escaped too, so a ``<word>`` in generated text shows as such in rendered Markdown.
    """
    merged = _merge_spans(spans, len(text), "highlight")
    out, k = [], 0
    for a, b in merged:
        mark = ("**{}**" if markdown else "<mark>{}</mark>").format(html.escape(text[a:b]))
        out += [html.escape(text[k:a]), mark if b > a else ""]
        k = b
    out.append(html.escape(text[k:]))
    return "".join(out)


def _to_pil(image: Any, where: str):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except OSError as e:
            raise InputError(f"{where}: cannot read image {str(image)!r} ({e})") from e
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # [C, H, W] -> [H, W, C]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise InputError(f"{where}: image must be a PIL image, a path or an array [H, W(, C)], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _png_b64(pil) -> str:
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _md_cell(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return ""
    return html.escape(_fmt(v)).replace("|", "\\|").replace("\n", " ")


# ---- blocks ---------------------------------------------------------------------------------------------------
@dataclass
class _Block(ABC):
    """One piece of a section, rendered to HTML and to Markdown."""

    @abstractmethod
    def html(self) -> str: ...

    @abstractmethod
    def markdown(self) -> str: ...


@dataclass
class _Text(_Block):
    text: str

    def html(self) -> str:
        return _paragraphs(self.text)

    def markdown(self) -> str:
        return self.text.strip() + "\n"


@dataclass
class _Code(_Block):
    code: str
    caption: str | None = None

    def html(self) -> str:
        cap = f"<p class=\"note\">{_inline(self.caption)}</p>" if self.caption else ""
        return f"{cap}<pre><code>{html.escape(self.code)}</code></pre>\n"

    def markdown(self) -> str:
        cap = f"{self.caption}\n\n" if self.caption else ""
        return f"{cap}```\n{self.code}\n```\n"


@dataclass
class _Image(_Block):
    data: str  # base64 PNG, or an inline SVG document
    mime: str  # "image/png" or "image/svg+xml"
    caption: str | None = None
    alt: str = "figure"

    def html(self) -> str:
        if self.mime == "image/svg+xml":
            body = self.data
        else:
            body = f"<img src=\"data:{self.mime};base64,{self.data}\" alt=\"{html.escape(self.alt)}\"/>"
        cap = f"<figcaption>{_inline(self.caption)}</figcaption>" if self.caption else ""
        return f"<figure>{body}{cap}</figure>\n"

    def markdown(self) -> str:
        data = self.data if self.mime == "image/png" else base64.b64encode(self.data.encode()).decode("ascii")
        cap = f"\n\n*{html.escape(self.caption)}*" if self.caption else ""
        return f"![{html.escape(self.alt)}](data:{self.mime};base64,{data}){cap}\n"


@dataclass
class _Table(_Block):
    frame: pd.DataFrame
    caption: str | None
    total: int
    index: bool

    def html(self) -> str:
        body = self.frame.to_html(index=self.index, escape=True, border=0, classes="df", na_rep="",
                                  float_format=lambda v: _fmt(v))
        if self.caption:
            body = body.replace(">", f">\n<caption>{_inline(self.caption)}</caption>", 1)
        note = (f"<p class=\"note\">showing the first {len(self.frame)} of {self.total} rows</p>"
                if self.total > len(self.frame) else "")
        return body + "\n" + note + "\n"

    def markdown(self) -> str:
        df = self.frame.reset_index() if self.index else self.frame
        head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
        rows = ["| " + " | ".join(_md_cell(v) for v in r) + " |"
                for r in df.itertuples(index=False)]
        cap = f"**{html.escape(self.caption)}**\n\n" if self.caption else ""
        note = f"\n\n_showing the first {len(df)} of {self.total} rows_" if self.total > len(df) else ""
        return cap + "\n".join([head, rule, *rows]) + note + "\n"


@dataclass
class _Example(_Block):
    image_b64: str | None
    size: tuple[int, int] | None
    text: str
    spans: list[tuple[int, int]]
    evidence: dict[str, Any]
    title: str | None

    def html(self) -> str:
        img = (f"<img src=\"data:image/png;base64,{self.image_b64}\" width=\"{self.size[0]}\" "
               f"height=\"{self.size[1]}\" alt=\"example image\"/>" if self.image_b64 else "")
        title = f"<h4>{_inline(self.title)}</h4>" if self.title else ""
        ev = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                     for k, v in self.evidence.items())
        ev = f"<table class=\"kv\">{ev}</table>" if ev else ""
        return (f"<div class=\"card\">{img}<div>{title}<p class=\"text\">{highlight(self.text, self.spans)}</p>"
                f"{ev}</div></div>\n")

    def markdown(self) -> str:
        title = f"**{html.escape(self.title)}**\n\n" if self.title else ""
        img = f"![example image](data:image/png;base64,{self.image_b64})\n\n" if self.image_b64 else ""
        ev = "".join(f"- {html.escape(str(k))}: {html.escape(_fmt(v))}\n" for k, v in self.evidence.items())
        return f"{title}{img}> {highlight(self.text, self.spans, markdown=True)}\n\n{ev}"


# ---- sections and report -------------------------------------------------------------------------------------
@dataclass
class Section:
    """One section of a :class:`Report`; its methods add content in order and return the section (chainable).

    Create sections with :meth:`Report.section` (or :meth:`Section.section` for a subsection).
    """

    title: str
    anchor: str
    level: int
    report: Report = field(repr=False)
    blocks: list[_Block] = field(default_factory=list, repr=False)
    subsections: list[Section] = field(default_factory=list, repr=False)

    def text(self, text: str) -> Section:
        """Paragraphs (blank-line separated); escaped, with ```code``` spans in monospace."""
        self.blocks.append(_Text(str(text)))
        return self

    def code(self, code: str, caption: str | None = None) -> Section:
        """A preformatted block (logs, JSON, a manifest)."""
        self.blocks.append(_Code(str(code), caption))
        return self

    def json(self, obj: Any, caption: str | None = None) -> Section:
        """``obj`` as indented JSON in a preformatted block (e.g. a run manifest)."""
        return self.code(json.dumps(obj, indent=1, default=str), caption)

    def figure(self, fig: Any, caption: str | None = None, *, format: str | None = None, dpi: int | None = None,
               close: bool = False) -> Section:
        """Embed a matplotlib figure, rendered now.

        Parameters
        ----------
        fig : matplotlib.figure.Figure
        caption : str, optional
        format : {"png", "svg"}, optional
            Base64 PNG (default: the report's ``figure_format``) or inline SVG (vector, larger).
        dpi : int, optional
            PNG resolution (default: the report's ``dpi``).
        close : bool
            ``plt.close(fig)`` after rendering.
        """
        if not hasattr(fig, "savefig"):
            raise InputError(f"Section.figure in {self.title!r}: expected a matplotlib Figure, got "
                             f"{type(fig).__name__}; for an image use Section.image")
        fmt = format or self.report.figure_format
        if fmt not in ("png", "svg"):
            raise InputError(f"Section.figure in {self.title!r}: format={fmt!r}; use 'png' or 'svg'")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi or self.report.dpi, bbox_inches="tight")
        if fmt == "png":
            block = _Image(base64.b64encode(buf.getvalue()).decode("ascii"), "image/png", caption,
                           alt=caption or "figure")
        else:
            svg = buf.getvalue().decode("utf-8")
            block = _Image(svg[svg.index("<svg"):], "image/svg+xml", caption, alt=caption or "figure")
        self.blocks.append(block)
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
        return self

    def image(self, image: Any, caption: str | None = None, *, max_size: int | None = None) -> Section:
        """Embed an image (PIL, array [H, W(, C)] or path) as PNG, shrunk to ``max_size`` pixels if given."""
        pil = _to_pil(image, f"Section.image in {self.title!r}")
        if max_size:
            pil.thumbnail((max_size, max_size))
        self.blocks.append(_Image(_png_b64(pil), "image/png", caption, alt=caption or "image"))
        return self

    def table(self, df: pd.DataFrame | Mapping[str, Any], caption: str | None = None, max_rows: int | None = 50,
              *, index: bool = False) -> Section:
        """A table from a DataFrame (cells escaped, floats to 3 significant digits) or a dict (key / value).

        Parameters
        ----------
        df : DataFrame or dict
        caption : str, optional
        max_rows : int or None
            Show the first ``max_rows`` rows with a note of the total; None shows all.
        index : bool
            Include the DataFrame index.
        """
        if isinstance(df, Mapping):
            df = pd.DataFrame({"key": [str(k) for k in df], "value": [_fmt(v) for v in df.values()]})
        if not isinstance(df, pd.DataFrame):
            raise InputError(f"Section.table in {self.title!r}: expected a DataFrame or dict, got {type(df).__name__}")
        shown = df if max_rows is None else df.head(max_rows)
        self.blocks.append(_Table(shown.copy(), caption, len(df), index))
        return self

    def example(self, image: Any, text: str, span: Any = None, evidence: Mapping[str, Any] | None = None, *,
                title: str | None = None, box: Sequence[float] | None = None, thumbnail: int = 160) -> Section:
        """An example card: image thumbnail (with the object's box), text with the error span marked, evidence.

        Parameters
        ----------
        image : PIL image, array, path or None
        text : str
            The generated text.
        span : (start, end) or list of them, optional
            Character offsets of the error words in ``text`` (e.g. a misalignment's ``start``, ``end``).
        evidence : dict, optional
            Feature name -> value (floats shown to 3 significant digits), e.g. a diagnosis row's scores.
        title : str, optional
            E.g. ``"item 12: object hallucinated 'square'"``.
        box : (x0, y0, x1, y1), optional
            Box in the image's pixels, drawn on the thumbnail.
        thumbnail : int
            Longest side of the thumbnail in pixels (small images are enlarged, pixel-exact).
        """
        where = f"Section.example in {self.title!r}"
        text = str(text)
        spans = _merge_spans(span, len(text), where)
        b64, size = None, None
        if image is not None:
            from PIL import Image, ImageDraw

            pil = _to_pil(image, where)
            scale = thumbnail / max(pil.size)
            size = (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale)))
            pil = pil.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
            if box is not None:
                x0, y0, x1, y1 = (float(v) * scale for v in box)
                ImageDraw.Draw(pil).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(213, 94, 0), width=2)
            b64 = _png_b64(pil)
        self.blocks.append(_Example(b64, size, text, spans, dict(evidence or {}), title))
        return self

    def section(self, title: str, text: str | None = None, *, anchor: str | None = None) -> Section:
        """A subsection (one heading level down), listed under this one in the table of contents."""
        sec = self.report._new_section(title, text, anchor, self.level + 1)
        self.subsections.append(sec)
        return sec

    def _html(self) -> str:
        h = min(self.level, 6)
        parts = [f"<section id=\"{self.anchor}\"><h{h}>{html.escape(self.title)}"
                 f"<a class=\"anchor\" href=\"#{self.anchor}\">#</a></h{h}>\n"]
        parts += [b.html() for b in self.blocks]
        parts += [s._html() for s in self.subsections]
        parts.append("</section>\n")
        return "".join(parts)

    def _markdown(self) -> str:
        parts = [f"{'#' * min(self.level, 6)} {self.title}\n"]
        parts += [b.markdown() for b in self.blocks]
        parts += [s._markdown() for s in self.subsections]
        return "\n".join(parts)

    def _toc(self) -> str:
        sub = "".join(s._toc() for s in self.subsections)
        sub = f"<ul>{sub}</ul>" if sub else ""
        return f"<li><a href=\"#{self.anchor}\">{html.escape(self.title)}</a>{sub}</li>"


class Report:
    """A self-contained HTML / Markdown report.

    Parameters
    ----------
    title : str
    text : str, optional
        Introductory paragraphs under the title.
    toc : bool
        Table of contents of the sections (with links to their anchors).
    figure_format : {"png", "svg"}
        Default embedding of figures.
    dpi : int
        Default PNG resolution of figures.
    footer : str, optional
        Default: the lvlm_probe version.
    """

    def __init__(self, title: str, text: str | None = None, *, toc: bool = True, figure_format: str = "png",
                 dpi: int = 150, footer: str | None = None) -> None:
        if figure_format not in ("png", "svg"):
            raise InputError(f"Report: figure_format={figure_format!r}; use 'png' or 'svg'")
        self.title = str(title)
        self.intro = text
        self.toc = toc
        self.figure_format = figure_format
        self.dpi = int(dpi)
        if footer is None:
            from lvlm_probe._version import __version__

            footer = f"Generated by lvlm_probe {__version__}."
        self.footer = footer
        self.sections: list[Section] = []
        self._anchors: set[str] = set()

    def __repr__(self) -> str:
        return f"Report({self.title!r}, sections={[s.title for s in self.sections]})"

    def _new_section(self, title: str, text: str | None, anchor: str | None, level: int) -> Section:
        base = slugify(anchor if anchor is not None else title)
        a, k = base, 2
        while a in self._anchors:
            a, k = f"{base}-{k}", k + 1
        self._anchors.add(a)
        sec = Section(str(title), a, level, self)
        if text:
            sec.text(text)
        return sec

    def section(self, title: str, text: str | None = None, *, anchor: str | None = None) -> Section:
        """Add a top-level section (heading level 2) and return it.

        The anchor is ``anchor`` or the slug of ``title`` (``"Object errors"`` -> ``#object-errors``), made unique
        with ``-2``, ``-3``, ...
        """
        sec = self._new_section(title, text, anchor, 2)
        self.sections.append(sec)
        return sec

    def _repr_html_(self) -> str:
        """Notebook view: the report's body with its own styles (no document wrapper)."""
        intro = _paragraphs(self.intro) if self.intro else ""
        body = "".join(s._html() for s in self.sections)
        return (f"<div class=\"lvlm-probe-report\"><style>{_scoped_css('div.lvlm-probe-report')}</style>"
                f"<h1>{html.escape(self.title)}</h1>{intro}{body}</div>")

    def html(self) -> str:
        """The whole report as one HTML document (no external resources)."""
        toc = (f"<nav class=\"toc\"><strong>Contents</strong><ul>{''.join(s._toc() for s in self.sections)}</ul>"
               f"</nav>\n" if self.toc and self.sections else "")
        intro = _paragraphs(self.intro) if self.intro else ""
        body = "".join(s._html() for s in self.sections)
        foot = f"<footer>{_inline(self.footer)}</footer>" if self.footer else ""
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
                f"<h1>{html.escape(self.title)}</h1>\n{intro}{toc}{body}{foot}\n</body></html>\n")

    def markdown(self) -> str:
        """The report as Markdown (figures and images as data URIs, spans in bold)."""
        parts = [f"# {self.title}\n"]
        if self.intro:
            parts.append(self.intro.strip() + "\n")
        if self.toc and self.sections:
            def toc(secs: list[Section], depth: int) -> list[str]:
                out = []
                for s in secs:
                    out.append(f"{'  ' * depth}- [{s.title}](#{s.anchor})")
                    out += toc(s.subsections, depth + 1)
                return out
            parts.append("\n".join(toc(self.sections, 0)) + "\n")
        parts += [s._markdown() for s in self.sections]
        if self.footer:
            parts.append(f"---\n{self.footer}\n")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike, format: str | None = None) -> Path:
        """Write the report atomically (temp file in the same folder, then rename); parent folders are created.

        Parameters
        ----------
        path : str or PathLike
        format : {"html", "md"}, optional
            Default from the suffix (``.md`` / ``.markdown`` -> Markdown, anything else HTML).

        Returns
        -------
        Path
        """
        path = Path(path)
        fmt = format or ("md" if path.suffix.lower() in (".md", ".markdown") else "html")
        if fmt not in ("html", "md"):
            raise InputError(f"Report.write: format={fmt!r}; use 'html' or 'md'")
        content = self.html() if fmt == "html" else self.markdown()  # fully built before anything is written
        atomic_write_text(path, content)
        return path


# ---- the diagnosis report -----------------------------------------------------------------------------------
#: Section titles of the diagnosis report, in order (the per-kind sections follow "Summary").
DIAGNOSIS_SECTIONS: tuple[str, ...] = ("Summary", "Object errors", "Attribute errors", "Relation errors",
                                       "Probe curves", "Evidence table", "Method", "Manifest")
#: Evidence columns shown on example cards and in the evidence table.
EVIDENCE_SHOWN: tuple[str, ...] = ("p_emit", "rank", "p_noimg", "pmi_img", "enc_p_true", "proj_p_true",
                                   "prior_train", "prior_lift", "pos_quantile", "img_attn_ratio")


def _box(item: Any, subject: Any) -> tuple | None:
    scene = getattr(item, "scene", None)
    if scene is None or not isinstance(subject, str):
        return None
    idx = scene.find(subject)
    return tuple(scene.objects[idx[0]].box) if idx else None


def _span(row: Any) -> tuple[int, int] | None:
    try:
        s, e = int(row["start"]), int(row["end"])
    except (TypeError, ValueError, KeyError):
        return None
    return (s, e) if e > s else None


def _measured(v: Any) -> bool:
    """A value worth showing: not None / NaN (an omitted object has no token, so no token evidence)."""
    if v is None:
        return False
    try:
        return not (isinstance(v, float) and np.isnan(v))
    except TypeError:
        return True


def _truth_words(row: Any, kind: str) -> str:
    """The scene's truth in words (a hallucinated object's class is absent, so it has no true value)."""
    if _measured(row.truth):
        return str(row.truth)
    if kind == "object" and row.polarity == "hallucinated":
        return "absent from the scene"
    return "none in the scene"


def diagnosis_figures(rep: Any) -> dict[str, Any]:
    """The report's figures of a DiagnosisReport: ``cause_bars``, ``level_bars``, ``probe_curves`` (when any).

    Drawn on explicit Figure objects: the caller's matplotlib backend is never changed.
    """
    from lvlm_probe.plotting import plot_cause_bars, plot_probe_curves

    figs: dict[str, Any] = {}
    d = rep.diagnoses
    if len(d):
        figs["cause_bars"] = plot_cause_bars(d, by="stage")
        figs["level_bars"] = plot_cause_bars(d, by="level")
    pc = rep.probe_curves
    if pc is not None and len(pc) and "family" in pc:
        keep = pc[pc.family.isin(["object", "attribute", "relation"])]
        att = keep[keep.family != "object"]
        obj = keep[keep.family == "object"]
        # the object class of each object's patches (one n-way concept) is its own line; the per-class presence
        # concepts (object:<class>, image level) are averaged into one line, labelled as such
        parts = [att, obj[obj.concept == "class"].assign(concept="object class (patches under the box)")]
        presence = obj[obj.concept.astype(str).str.startswith("object:")]
        if len(presence):
            cols = ["site", "component", "layer", "depth", "selection"]
            mean = presence.groupby(cols, as_index=False)[["score", "ci_low", "ci_high", "control_score"]].mean()
            mean["concept"] = f"object presence (mean over {presence.concept.nunique()} classes)"
            parts.append(mean)
        att = pd.concat([p for p in parts if len(p)], ignore_index=True)
        if len(att):
            figs["probe_curves"] = plot_probe_curves(att, control=att.control_score.notna().any())
    return figs


def render_diagnosis(rep: Any, out: str | os.PathLike, *, figures: bool = True, max_examples: int = 3) -> Path:
    """Write ``report.html`` and ``figures/*.pdf|png`` for a :class:`~lvlm_probe.tracing.DiagnosisReport`.

    Figures of an earlier rendering into the same ``figures/`` that this one does not draw are removed, so the
    folder always matches the report. The caller's matplotlib backend is untouched.

    Returns
    -------
    Path
        The report path.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    figs = diagnosis_figures(rep) if figures else {}
    written: set[Path] = set()
    try:
        report = _diagnosis_report(rep, out, figs, figures, max_examples, written)
        path = report.write(out / "report.html")
    finally:
        for fig in figs.values():
            plt.close(fig)
    fig_dir = out / "figures"
    if fig_dir.is_dir():
        for f in fig_dir.iterdir():
            if f.is_file() and f not in written:
                f.unlink()
    return path


def _save(fig: Any, stem: Path, written: set[Path]) -> None:
    from lvlm_probe.plotting import save_figure

    written.update(Path(f) for f in save_figure(fig, stem))


def _diagnosis_report(rep: Any, out: Path, figs: dict, figures: bool, max_examples: int, written: set[Path]
                      ) -> Report:
    for name, fig in figs.items():
        _save(fig, out / "figures" / name, written)
    m = rep.manifest
    n_err = int(m.get("n_errors", len(rep.errors)))
    report = Report(f"lvlm_probe diagnosis: {m.get('model')}",
                    f"{m.get('n_items')} items, {n_err} misaligned output{'s' if n_err != 1 else ''}, each traced to "
                    "a level (data / model / inference) and a stage by the evidence cascade.")
    _summary_section(report.section("Summary"), rep, figs)
    for kind in ("object", "attribute", "relation"):
        _kind_section(report.section(f"{kind.capitalize()} errors"), rep, kind, figures, max_examples, out, written)
    det = getattr(rep, "detected", None)
    if det is not None and len(det):
        _detected_section(report.section("Claims without ground truth"), rep)
    _tail_sections(report, rep, figs)
    return report


def _detected_section(s: Section, rep: Any) -> None:
    """Items without a scene graph: the detector's flagged claims and the truth-free stage each was traced to."""
    d = rep.detected
    flagged = rep.flagged()
    thr = rep.manifest.get("config", {}).get("detect_threshold", 0.5)
    s.text(f"{d.item_id.nunique()} item(s) had no scene graph, so no judge could check them. The hallucination "
           f"detector scored their {len(d)} claims; {len(flagged)} reached p_misaligned >= {thr} and were traced "
           "with the evidence that needs no truth (training prior, image use, decoding, position). Stages that need "
           "the true value (encoder, projector) cannot be tested here: a flagged claim no truth-free rule explains "
           "says `needs ground truth`. See docs/detection.md.")
    if len(flagged):
        s.table(flagged.groupby(["kind", "level", "stage"]).size().rename("claims").reset_index(),
                "Flagged claims per kind, level and stage")
        cols = [c for c in ("item_id", "kind", "subject", "value", "word", "p_misaligned", "stage", "rule",
                            "needs_ground_truth") if c in flagged]
        s.table(flagged.sort_values("p_misaligned", ascending=False)[cols], "Flagged claims (all claims: "
                "detected.csv)", max_rows=100)


def _summary_section(s: Section, rep: Any, figs: dict) -> None:
    d, g = rep.diagnoses, rep.generations
    if len(d):
        s.table(rep.summary(), "Errors per kind, level and stage", max_rows=60)
        if "cause_bars" in figs:
            s.figure(figs["cause_bars"], "Errors per kind, stacked by diagnosed stage")
        if "level_bars" in figs:
            s.figure(figs["level_bars"], "Errors per kind, stacked by level")
    else:
        s.text("No misaligned output was found on these items.")
    failed = g[g.failed.notna()] if "failed" in g else g.iloc[:0]
    if len(failed):
        s.text(f"{len(failed)} of {len(g)} items could not be run and are not diagnosed:")
        s.table(failed[["item_id", "failed"]], "Items that could not be run")


def _kind_section(sec: Section, rep: Any, kind: str, figures: bool, max_examples: int, out: Path,
                  written: set[Path]) -> None:
    from lvlm_probe.plotting import plot_evidence_panel

    d, g = rep.diagnoses, rep.generations
    dk = d[d.kind == kind] if len(d) else d
    if not len(dk):
        sec.text(f"No {kind} errors.")
        return
    items = {it.id: it for it in rep.items}
    text_of = dict(zip(g.item_id.astype(str), g.text))
    ev = rep.evidence.set_index("error_id") if len(rep.evidence) else None
    sec.text(f"{len(dk)} {kind} error{'s' if len(dk) != 1 else ''}; per stage: " + ", ".join(
        f"{st} {n}" for st, n in dk.stage.value_counts().items()) + ".")
    for stage, grp in dk.groupby("stage", sort=False):
        sub = sec.section(f"{kind}: {stage}")
        sub.text(f"{len(grp)} error{'s' if len(grp) != 1 else ''} traced to {stage} (level {grp.level.iloc[0]}). "
                 f"Rule: {grp.rule.iloc[0]}")
        item = None
        for _, row in grp.head(max_examples).iterrows():
            item = items.get(str(row.item_id))
            full = ev.loc[row.error_id] if ev is not None and row.error_id in ev.index else row
            span = _span(full)
            truth = _truth_words(row, kind)
            evidence = {k: full.get(k) for k in EVIDENCE_SHOWN if k in full and _measured(full.get(k))}
            evidence.update(claimed=row.claimed if _measured(row.claimed) else "(not mentioned)", truth=truth,
                            causes=row.causes)
            claimed = row.claimed if isinstance(row.claimed, str) else full.get("subject")
            sub.example(item.image if item is not None else None, text_of.get(str(row.item_id)) or "",
                        span=[span] if span else None, evidence=evidence,
                        title=f"{row.item_id}: {row.polarity} {kind} '{claimed}' (true: {truth})",
                        box=_box(item, full.get("subject")) if item is not None else None)
        if figures and item is not None:
            _evidence_panel(sub, grp.iloc[0], ev, items, text_of, kind, stage, out, written, plot_evidence_panel)


def _evidence_panel(sub: Section, first: Any, ev: Any, items: dict, text_of: dict, kind: str, stage: str, out: Path,
                    written: set[Path], plot: Any) -> None:
    full = ev.loc[first.error_id] if ev is not None and first.error_id in ev.index else first
    merged = {**dict(full), **dict(first)}
    item = items[str(first.item_id)]
    try:
        fig = plot(merged, item.image, text=text_of.get(str(first.item_id)) or "", box=_box(item, merged.get("subject")))
    except Exception:  # noqa: BLE001 - a panel that cannot be drawn must not lose the report
        return
    _save(fig, out / "figures" / f"evidence_{kind}_{stage.replace(' ', '_')}", written)
    sub.figure(fig, f"Evidence panel of the first {kind} error traced to {stage}", close=True)


def _tail_sections(report: Report, rep: Any, figs: dict) -> None:
    import importlib

    from lvlm_probe.schema import STAGES, score_column

    d, m = rep.diagnoses, rep.manifest
    sec = report.section("Probe curves")
    if "probe_curves" in figs:
        sec.figure(figs["probe_curves"], "Out-of-fold probe accuracy per site (dashed: random-label control)")
    if rep.probe_curves is not None and len(rep.probe_curves):
        cols = [c for c in ("site", "concept", "score", "control_score", "selectivity", "n") if c in rep.probe_curves]
        sec.table(rep.probe_curves[cols], "Probe scores", max_rows=80)
    else:
        sec.text("No probe curves (no scene graphs with boxes, or probing was skipped).")
    sec = report.section("Evidence table")
    if len(d):
        cols = ["item_id", "kind", "polarity", "claimed", "truth", "level", "stage", "confidence",
                *[c for c in ("confirmed", "confirmed_by") if c in d], *[c for c in EVIDENCE_SHOWN if c in d]]
        sec.table(d[cols], "One row per error (the full table is diagnosis.csv)", max_rows=200)
        if "confirmed" in d:
            from lvlm_probe.tracing.confirm import CONFIRMING, confirmation_summary

            which = "; ".join(f"{st}: {m}" for st, m in CONFIRMING.items() if m)
            sec.table(confirmation_summary(d), "Interventional confirmation per stage: errors the stage's confirming "
                      f"intervention removed ({which}; the swaps need a reference model sharing the LLM)")
    else:
        sec.text("No errors.")
    sec = report.section("Method")
    sec.text(importlib.import_module("lvlm_probe.tracing.cascade").__doc__ or "")
    sec.json(m.get("thresholds", {}), "Thresholds")
    sec.text("Scores per stage (columns " + ", ".join(score_column(st) for st in STAGES) + ") grade each rule's "
             "evidence independently of the cascade order.")
    report.section("Manifest").json(m)
