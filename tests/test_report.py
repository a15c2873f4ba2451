"""The HTML / Markdown report builder: sections, anchors, embedded figures and images, escaping, atomic writes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import lvlm_probe.report as R  # noqa: E402
from lvlm_probe.errors import InputError  # noqa: E402
from lvlm_probe.report import Report, highlight, slugify  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def small_fig():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 1])
    return fig


def embedded_pngs(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def build() -> Report:
    rep = Report("Diagnosis <demo>", "Intro with `code` & an ampersand.")
    s = rep.section("Summary", "First paragraph.\n\nSecond `misalignments.csv` paragraph.")
    s.figure(small_fig(), "Causes per <b>kind</b>")
    s.table(pd.DataFrame({"item_id": ["a<b>", "c"], "score": [0.123456, np.nan], "n": [1, 2]}), "Scores & more")
    obj = rep.section("Object errors")
    obj.section("cooccurrence").example(Image.new("RGB", (64, 48), "white"), "There is a <square> here.",
                                        span=(11, 19), evidence={"p_no_image": 0.71234, "stage": "cooccurrence"},
                                        title="item 3", box=(8, 8, 24, 24))
    obj.section("Cooccurrence")  # same slug: made unique
    rep.section("Manifest").json({"model": "organism:cooccurrence", "n": 64})
    return rep


def test_sections_anchors_toc_and_escaping():
    page = build().html()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for title in ("Summary", "Object errors", "cooccurrence", "Cooccurrence", "Manifest"):
        assert f">{title}<a class=\"anchor\"" in page
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["summary", "object-errors", "cooccurrence", "cooccurrence-2", "manifest"]
    toc = page[page.index('<nav class="toc">'):page.index("</nav>")]
    assert re.findall(r'href="#([^"]+)"', toc) == ids
    assert "<h3>cooccurrence" in page and "<h2>Summary" in page  # subsections one level down
    # user text is escaped everywhere; backtick spans become <code>
    assert "<title>Diagnosis &lt;demo&gt;</title>" in page and "<h1>Diagnosis &lt;demo&gt;</h1>" in page
    assert "Causes per &lt;b&gt;kind&lt;/b&gt;" in page and "<b>kind</b>" not in page
    assert "<td>a&lt;b&gt;</td>" in page and "a<b>" not in page
    assert "<p>Intro with <code>code</code> &amp; an ampersand.</p>" in page
    assert "<p>Second <code>misalignments.csv</code> paragraph.</p>" in page
    assert "<caption>Scores &amp; more</caption>" in page
    assert "<td>0.123</td>" in page
    # example card: highlighted span, escaped text, evidence table
    assert "There is a <mark>&lt;square&gt;</mark> here." in page
    assert "<td>p_no_image</td><td>0.712</td>" in page
    assert "&quot;model&quot;: &quot;organism:cooccurrence&quot;" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: no external resources


def test_embedded_figure_and_thumbnail():
    page = build().html()
    fig_png, thumb = embedded_pngs(page)
    assert fig_png.info["dpi"][0] == pytest.approx(150, abs=1)  # the report's default dpi
    assert 250 < fig_png.size[0] < 340  # 2 in at 150 dpi, tight bbox
    assert thumb.size == (160, 120)  # longest side 160, aspect kept, enlarged pixel-exact
    px = np.asarray(thumb)
    assert tuple(px[int(8 * 2.5), 40]) == (213, 94, 0)  # box outline scaled by 160/64
    assert tuple(px[100, 100]) == (255, 255, 255)
    rep = Report("svg", figure_format="svg")
    rep.section("A").figure(small_fig(), "vector", close=True)
    page = rep.html()
    assert "<figure><svg" in page and "<?xml" not in page
    with pytest.raises(InputError, match="expected a matplotlib Figure"):
        rep.section("B").figure(np.zeros((2, 2)))


def test_table_max_rows_and_dict():
    rep = Report("t")
    rep.section("T").table(pd.DataFrame({"x": range(10)}), max_rows=3).table({"n_items": 64, "rate": 0.51234})
    page = rep.html()
    assert page.count("<tr") == 4 + 3  # header + 3 rows, header + 2 rows
    assert "showing the first 3 of 10 rows" in page
    assert "<td>rate</td>" in page and "<td>0.512</td>" in page
    with pytest.raises(InputError, match="expected a DataFrame or dict"):
        rep.section("U").table([1, 2])


def test_highlight_and_span_errors():
    assert highlight("a red square", (6, 12)) == "a red <mark>square</mark>"
    assert highlight("a & b", [(0, 1), (4, 5)]) == "<mark>a</mark> &amp; <mark>b</mark>"
    assert highlight("abcdef", [(0, 3), (2, 5)]) == "<mark>abcde</mark>f"  # overlaps merged
    assert highlight("a <red> square", (8, 14), markdown=True) == "a &lt;red&gt; **square**"
    rep = Report("x")
    with pytest.raises(InputError, match=r"span \(5, 50\) is outside the text"):
        rep.section("s").example(None, "short", span=(5, 50))
    assert slugify("LLM fusion / decoding!") == "llm-fusion-decoding" and slugify("???") == "section"


def test_markdown_export():
    md = build().markdown()
    assert md.startswith("# Diagnosis <demo>\n")
    assert "## Summary" in md and "### cooccurrence" in md and "- [Object errors](#object-errors)" in md
    assert "  - [Cooccurrence](#cooccurrence-2)" in md
    assert "| item_id | score | n |\n|---|---|---|\n| a&lt;b&gt; | 0.123 | 1 |\n| c |  | 2 |\n" in md  # NaN blank
    assert "*Causes per &lt;b&gt;kind&lt;/b&gt;*" in md
    assert "> There is a **&lt;square&gt;** here." in md
    assert "- p_no_image: 0.712" in md
    assert md.count("data:image/png;base64,") == 2


def test_write_html_and_md_atomically(tmp_path, monkeypatch):
    rep = build()
    out = rep.write(tmp_path / "deep" / "report.html")
    assert out.read_text(encoding="utf-8") == rep.html()
    assert rep.write(tmp_path / "report.md").read_text(encoding="utf-8") == rep.markdown()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["report.html"]
    # a failure while writing leaves the previous report and no temp file
    target = tmp_path / "keep.html"
    target.write_text("old report")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        rep.write(target)
    assert target.read_text() == "old report"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    # a failure while building the page writes nothing at all
    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(R._Text, "html", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        rep.write(tmp_path / "new.html")
    assert not (tmp_path / "new.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(InputError, match="format='pdf'"):
        rep.write(tmp_path / "x.pdf", format="pdf")


def test_notebook_views(llava, tmp_path):
    """Short reprs for records and _repr_html_ for the results a notebook user looks at."""
    import lvlm_probe as lp
    from conftest import rand_image

    items = [lp.Item(id=f"n{k}", image=rand_image(k), prompt="what is in the image ?") for k in range(2)]
    batch = llava.prepare_items(items)
    assert batch.item_ids == ["n0", "n1"]
    r = repr(batch)
    assert r.startswith("Batch(2 items ['n0', 'n1']") and "tensor(" not in r and len(r) < 300
    gen = llava.generate(batch, max_new_tokens=3)
    g = repr(gen)
    assert g.startswith("Generation(2 items") and "n0:" in g and "tensor(" not in g
    store = lp.capture(llava, items + [lp.Item(id="bad", image=str(tmp_path / "no.png"), prompt="what ?")],
                       sites=["llm.resid_post.*"], select=["image_mean"], out=tmp_path / "s", progress=False)
    h = store._repr_html_()
    assert "2 items, 1 failed" in h and "image_mean" in h and "bad" in h and "does not exist" in h
    rep = lp.Report("T <x>")
    rep.section("A").text("hello")
    v = rep._repr_html_()
    assert "T &lt;x&gt;" in v and "hello" in v and "<body" not in v and "div.lvlm-probe-report h2" in v
