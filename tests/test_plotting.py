"""Figure functions of lvlm_probe.plotting on synthetic DataFrames following the shared column contracts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from lvlm_probe.data.scene import SceneGraph, SceneObject  # noqa: E402
from lvlm_probe.errors import InputError  # noqa: E402
from lvlm_probe.plotting import (OKABE_ITO, ONE_COLUMN, TWO_COLUMN, figsize, paper_style,  # noqa: E402
                                 plot_cause_bars, plot_confusion, plot_evidence_panel, plot_image_attention,
                                 plot_logit_lens, plot_patch_heatmap, plot_probe_curves, save_figure, use_style)
from lvlm_probe.plotting.diagnosis import _wrap_spans  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---- synthetic frames per contract ----------------------------------------------------------------------------
def sweep_frame(concepts=("circle", "red"), selections=("image_mean",)) -> pd.DataFrame:
    """3 vision layers, projector in/out, 4 LLM layers: depth 0..8."""
    sites = ([("vision", f"vision.resid_post.{k}", k) for k in range(3)]
             + [("projector", "projector.in", 0), ("projector", "projector.out", 1)]
             + [("llm", f"llm.resid_post.{k}", k) for k in range(4)])
    rows = []
    for sel in selections:
        for ci, c in enumerate(concepts):
            for depth, (comp, site, layer) in enumerate(sites):
                s = 0.5 + 0.05 * depth + 0.01 * ci
                rows.append(dict(site=site, component=comp, layer=layer, depth=depth, selection=sel, concept=c,
                                 family="object" if ci == 0 else "attribute", score=s, ci_low=s - 0.03,
                                 ci_high=s + 0.03, majority=0.5, control_score=0.5 + 0.01 * depth,
                                 selectivity=s - 0.5 - 0.01 * depth, p_value=0.01, n=100, n_classes=2))
    return pd.DataFrame(rows)


def attention_frame(n_items=2, n_steps=3, n_layers=4, n_heads=3) -> pd.DataFrame:
    rows = []
    for i in range(n_items):
        for t in range(n_steps):
            for la in range(n_layers):
                for h in range(n_heads):
                    m = 0.1 * la + 0.01 * h + 0.02 * t + 0.001 * i
                    rows.append(dict(b=i, step=t, layer=la, head=h, to_role="image", mass=m))
                    rows.append(dict(b=i, step=t, layer=la, head=h, to_role="question", mass=1 - m))
    return pd.DataFrame(rows)


def word_prob_frame(n_layers=3, rows_=2, cols=3, items=(0,)) -> pd.DataFrame:
    out = []
    for it in items:
        for la in range(n_layers):
            for r in range(rows_):
                for c in range(cols):
                    out.append(dict(b=it, item_id=f"x{it}", site=f"llm.resid_post.{la}", layer=la,
                                    position=5 + r * cols + c, role="image", row=r, col=c, word="circle",
                                    token_id=7, prob=(la * 100 + r * 10 + c) / 1000 + it / 10000))
            out.append(dict(b=it, item_id=f"x{it}", site=f"llm.resid_post.{la}", layer=la, position=20,
                            role="question", row=pd.NA, col=pd.NA, word="circle", token_id=7, prob=0.9))
    df = pd.DataFrame(out)
    df["row"] = df["row"].astype("Int64")
    df["col"] = df["col"].astype("Int64")
    return df


def diagnosis_frame() -> pd.DataFrame:
    stages = ["cooccurrence"] * 3 + ["encoder"] * 2 + ["decoding"]
    kinds = ["object"] * 4 + ["attribute"] * 2
    levels = {"cooccurrence": "data", "encoder": "model", "decoding": "inference"}
    df = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "error_id": range(6), "kind": kinds,
                       "stage": stages, "level": [levels[s] for s in stages], "confidence": 0.8})
    for s in ("cooccurrence", "attribute prior", "encoder", "llm fusion", "decoding"):
        df[f"score_{s.replace(' ', '_')}"] = 0.1
    return df


# ---- style ------------------------------------------------------------------------------------------------------
def test_style_widths_palette_and_context():
    assert figsize("one")[0] == ONE_COLUMN == 3.5 and figsize("two")[0] == TWO_COLUMN == 7.2
    before = matplotlib.rcParams["font.size"]
    with paper_style():
        assert matplotlib.rcParams["font.size"] == 8
        assert matplotlib.rcParams["pdf.fonttype"] == 42
        cycle = [c.lower() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
        assert cycle[:3] == ["#0072b2", "#e69f00", "#009e73"]
    assert matplotlib.rcParams["font.size"] == before  # context restores
    with pytest.raises(InputError, match="column width"):
        figsize("three")
    fig = plot_probe_curves(sweep_frame(), width="one")
    assert fig.get_size_inches()[0] == pytest.approx(3.5)
    fig = plot_probe_curves(sweep_frame(), width="two")
    assert fig.get_size_inches()[0] == pytest.approx(7.2)
    assert fig.axes[0].xaxis.label.get_fontsize() == 8  # style applied while building
    with matplotlib.rc_context():
        use_style()
        assert matplotlib.rcParams["axes.spines.top"] is False


def test_save_figure_writes_valid_pdf_and_png_atomically(tmp_path):
    fig = plot_cause_bars(diagnosis_frame())
    paths = save_figure(fig, tmp_path / "sub" / "causes")
    assert [p.name for p in paths] == ["causes.pdf", "causes.png"]
    assert paths[0].read_bytes()[:5] == b"%PDF-" and paths[0].stat().st_size > 1000
    with Image.open(paths[1]) as im:
        assert im.format == "PNG"
        assert im.size[0] > 300  # 300 dpi
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["causes.pdf", "causes.png"]  # no temp files
    assert save_figure(fig, tmp_path / "c.svg", formats=("svg",))[0].read_text().lstrip().startswith("<?xml")
    with pytest.raises(InputError, match="cannot write format"):
        save_figure(fig, tmp_path / "x", formats=("pdf", "docx"))
    assert not (tmp_path / "x.pdf").exists()

    class Boom(Exception):
        pass

    (tmp_path / "keep.png").write_bytes(b"old")

    def boom(*a, **k):
        raise Boom()

    fig.savefig = boom
    with pytest.raises(Boom):
        save_figure(fig, tmp_path / "keep", formats=("png",))
    assert (tmp_path / "keep.png").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- probe curves -------------------------------------------------------------------------------------------------
def test_probe_curves_lines_bands_control_and_components():
    df = sweep_frame()
    fig = plot_probe_curves(df)
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # 2 concepts x (score, control)
    score, control = ax.lines[0], ax.lines[1]
    np.testing.assert_allclose(score.get_xdata(), np.arange(9))
    np.testing.assert_allclose(score.get_ydata(), df[df.concept == "circle"].sort_values("depth")["score"])
    np.testing.assert_allclose(control.get_ydata(), 0.5 + 0.01 * np.arange(9))
    assert control.get_linestyle() == "--" and score.get_linestyle() == "-"
    assert control.get_color() == score.get_color()
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    spans = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(spans) == 3  # vision, projector, llm
    xs = sorted((p.get_x(), p.get_x() + p.get_width()) for p in spans)
    assert xs == [(-0.5, 2.5), (2.5, 4.5), (4.5, 8.5)]
    labels = {t.get_text() for t in ax.texts}
    assert labels == {"vision encoder", "projector", "LLM"}
    assert ax.get_xlabel() == "depth" and ax.get_ylabel() == "probe score"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["circle", "red", "control task"]


def test_probe_curves_panels_concepts_and_errors():
    df = sweep_frame(concepts=("circle", "red", "left of"), selections=("image_mean", "last_prompt"))
    fig = plot_probe_curves(df, concepts=["red"], control=False, majority=True)
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == ["selection = image_mean", "selection = last_prompt"]
    assert all(len(a.lines) == 2 for a in visible)  # score + majority
    fig = plot_probe_curves(df, selection="last_prompt", panels="concept", ncols=2)
    assert sum(a.get_visible() for a in fig.axes) == 3 and len(fig.axes) == 4
    with pytest.raises(InputError, match=r"lacks column\(s\) \['ci_low', 'ci_high'\]"):
        plot_probe_curves(df.drop(columns=["ci_low", "ci_high"]))
    with pytest.raises(InputError, match=r"concept\(s\) \['dog'\]"):
        plot_probe_curves(df, concepts=["dog"])
    with pytest.raises(InputError, match="several rows share depth"):
        plot_probe_curves(pd.concat([df, df]), selection="image_mean")
    with pytest.raises(InputError, match="expected a pandas DataFrame"):
        plot_probe_curves(df.to_dict())


# ---- patch heatmap -----------------------------------------------------------------------------------------------
def test_patch_heatmap_array_over_image_with_scene_boxes():
    img = Image.new("RGB", (64, 48), "white")
    values = np.arange(12, dtype=float).reshape(3, 4)
    sg = SceneGraph(objects=[SceneObject("circle", {"color": "red"}, (4, 4, 20, 20)),
                             SceneObject("square", {}, (30, 10, 60, 40))], width=64, height=48)
    fig = plot_patch_heatmap(img, values, boxes=sg)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # + colourbar
    base, heat = ax.images
    assert heat.get_extent() == [0, 64, 48, 0] and base.get_extent() == [0, 64, 48, 0]
    np.testing.assert_array_equal(heat.get_array(), values)
    assert heat.get_cmap().name == "viridis"
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [(4, 4, 16, 16), (30, 10, 30, 30)]
    assert [t.get_text() for t in ax.texts] == ["red circle", "square"]
    fig = plot_patch_heatmap(img, values, boxes=[(0, 0, 5, 5)], labels=["dog"], colorbar=False)
    assert len(fig.axes) == 1 and [t.get_text() for t in fig.axes[0].texts] == ["dog"]
    with pytest.raises(InputError, match="1 labels for 2 boxes"):
        plot_patch_heatmap(img, values, boxes=sg, labels=["x"])


def test_patch_heatmap_from_attribution_frame_signed():
    rows = [dict(b=i, image=0, method=m, target="circle", row=r, col=c, value=(r - c) * (1 + i))
            for i in range(2) for m in ("ig", "saliency") for r in range(2) for c in range(2)]
    df = pd.DataFrame(rows)
    fig = plot_patch_heatmap(None, df, select={"b": 1, "method": "ig"})
    heat = fig.axes[0].images[-1]
    np.testing.assert_array_equal(heat.get_array(), [[0, -2], [2, 0]])
    assert heat.get_cmap().name == "PuOr_r" and heat.norm.vcenter == 0
    assert heat.get_extent() == [0, 2, 2, 0]
    assert fig.axes[1].get_ylabel() == "value"
    with pytest.raises(InputError, match="occurs more than once"):
        plot_patch_heatmap(None, df, select={"b": 1})
    with pytest.raises(InputError, match=r"no rows with method == 'gradcam'"):
        plot_patch_heatmap(None, df, select={"method": "gradcam"})
    with pytest.raises(InputError, match=r"lacks column\(s\) \['row'\]"):
        plot_patch_heatmap(None, df.drop(columns=["row"]))
    with pytest.raises(InputError, match="must have 2 dimensions"):
        plot_patch_heatmap(None, np.zeros((2, 2, 2)))


# ---- image attention ----------------------------------------------------------------------------------------------
def test_image_attention_by_layer_and_step():
    df = attention_frame()
    fig = plot_image_attention(df, by="layer")
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and len(ax.collections) == 1
    # mean over items and steps, then over heads: 0.1 la + 0.01 + 0.02 + 0.0005
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 0.1 * np.arange(4) + 0.0305)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), np.arange(4))
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "attention mass"
    # items= keeps batch rows (column b): row 1 alone adds 0.001 instead of the mean 0.0005
    np.testing.assert_allclose(plot_image_attention(df, by="layer", items=[1]).axes[0].lines[0].get_ydata(),
                               0.1 * np.arange(4) + 0.031)
    with pytest.raises(InputError, match=r"no rows left after keeping b in \[5\]"):
        plot_image_attention(df, items=[5])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    sd = np.std([0.0, 0.01, 0.02])
    assert band.min() == pytest.approx(0.0305 - sd) and band.max() == pytest.approx(0.3305 + sd)
    fig = plot_image_attention(df, by="step", to_role=["image", "question"], spread="range")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "generation step" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 0.15 + 0.01 + 0.02 * np.arange(3) + 0.0005)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["to image", "to question"]
    with pytest.raises(InputError, match=r"lacks column\(s\) \['head'\]"):
        plot_image_attention(df.drop(columns=["head"]))
    with pytest.raises(InputError, match="by='head'"):
        plot_image_attention(df, by="head")
    with pytest.raises(InputError, match=r"role\(s\) \['sink'\]"):
        plot_image_attention(df, to_role="sink")


# ---- cause bars -------------------------------------------------------------------------------------------------
def test_cause_bars_stacks_counts():
    df = diagnosis_frame()
    fig = plot_cause_bars(df)
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers] == ["cooccurrence", "encoder", "decoding"]
    heights = np.array([[b.get_height() for b in c] for c in ax.containers])  # [cause, kind]
    np.testing.assert_array_equal(heights, [[3, 0], [1, 1], [0, 1]])
    bottoms = np.array([[b.get_y() for b in c] for c in ax.containers])
    np.testing.assert_array_equal(bottoms, [[0, 0], [3, 0], [4, 1]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["object", "attribute"]
    assert [t.get_text() for t in ax.texts] == ["n=4", "n=2"]
    assert ax.containers[0][0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb("#E69F00"))
    fig = plot_cause_bars(df, by="level", normalize=True)
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers] == ["data", "model", "inference"]
    np.testing.assert_allclose([b.get_height() for b in ax.containers[0]], [0.75, 0.0])
    assert ax.get_ylabel() == "fraction of errors"
    with pytest.raises(InputError, match=r"lacks column\(s\) \['stage'\]"):
        plot_cause_bars(df.drop(columns=["stage"]))


# ---- evidence panel ----------------------------------------------------------------------------------------------
def test_wrap_spans_keeps_every_character_and_marks_the_span():
    text = "A red circle is left of a big square.\nThere is also a tiny green triangle somewhere."
    span = (26, 36)
    lines = _wrap_spans(text, span, 20)
    assert all(sum(len(s) for s, _ in line) <= 24 for line in lines)
    assert "".join(s for line in lines for s, _ in line) == text.replace("\n", "")
    assert "".join(s for line in lines for s, hl in line if hl) == text[26:36] == "big square"
    assert _wrap_spans("", None, 10) == [[]]


def test_evidence_panel():
    text = "There is a red circle and a square in the image."
    row = pd.Series(dict(item_id="i0", error_id=0, kind="object", polarity="hallucinated", subject="square",
                         claimed="square", truth=None, start=28, end=34, stage="cooccurrence", level="data",
                         confidence=0.9, score_cooccurrence=0.8, score_encoder=0.1, score_decoding=0.05,
                         box=(10, 12, 30, 40)))
    img = Image.new("RGB", (64, 48), "gray")
    fig = plot_evidence_panel(row, img, text=text)
    iax, tax, bax = fig.axes
    assert fig.get_size_inches()[0] == pytest.approx(7.2)
    rect = [p for p in iax.patches if isinstance(p, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rect] == [(10, 12, 20, 28)]
    segments = tax.artists[0].findobj(Text)  # the wrapped text, one Text per segment
    assert "".join(t.get_text() for t in segments) == text
    assert [t.get_text() for t in segments if t.get_bbox_patch() is not None] == ["square"]
    assert tax.get_title(loc="left") == "object hallucinated: 'square'"
    bars = bax.patches
    assert [b.get_width() for b in bars] == [0.8, 0.1, 0.05]
    assert [t.get_text() for t in bax.get_yticklabels()] == ["cooccurrence", "encoder", "decoding"]
    assert bars[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(OKABE_ITO["yellow"]))
    assert bars[1].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(OKABE_ITO["blue"]))
    # the title names the chosen stage with its own (highlighted) bar's score, the story the bars tell
    assert "cooccurrence (data), score 0.80" in bax.get_title(loc="left")
    assert "scores higher" not in bax.get_title(loc="left")
    lower = row.copy()
    lower["score_encoder"] = 0.95
    title = plot_evidence_panel(lower, text=text).axes[-1].get_title(loc="left")
    assert "encoder scores higher but its rule does not hold" in title
    fig = plot_evidence_panel(row.to_dict(), features={"p_no_image": 0.7, "probe_acc": 0.95}, text=text)
    assert len(fig.axes) == 2 and [b.get_width() for b in fig.axes[1].patches] == [0.7, 0.95]
    with pytest.raises(InputError, match="span .* is outside the text"):
        plot_evidence_panel(pd.concat([row, pd.Series({"text": "square"})]))  # only the error words
    with pytest.raises(InputError, match="no score_<stage> columns"):
        plot_evidence_panel(row.drop([c for c in row.index if c.startswith("score_")]), text=text)
    with pytest.raises(InputError, match=r"feature column\(s\) \['x'\]"):
        plot_evidence_panel(row, text=text, features=["x"])


# ---- logit lens --------------------------------------------------------------------------------------------------
def test_logit_lens_heatmap_and_grid():
    df = word_prob_frame()
    fig = plot_logit_lens(df)
    ax = fig.axes[0]
    mat = ax.images[0].get_array()
    assert mat.shape == (3, 6)  # layers x patches
    np.testing.assert_allclose(mat[2], [(200 + r * 10 + c) / 1000 for r in range(2) for c in range(3)])
    assert ax.get_ylabel() == "layer" and "patch" in ax.get_xlabel()
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "p('circle')"
    fig = plot_logit_lens(df, grid=True, layers=[0, 2], image=Image.new("RGB", (30, 20)))
    maps = [a for a in fig.axes if a.get_visible() and a.images]
    assert [a.get_title() for a in maps] == ["layer 0", "layer 2"]
    assert maps[1].images[1].get_extent() == [0, 30, 20, 0]
    np.testing.assert_allclose(maps[1].images[1].get_array(), [[0.2, 0.201, 0.202], [0.21, 0.211, 0.212]])
    # logit_lens frame: the token's probability where it is in the top k, blank elsewhere
    lens = df.drop(columns=["word"]).assign(rank=1, token=" circle", logit=0.0)
    lens.loc[(lens.layer == 0) & (lens.row == 0) & (lens.col == 0), "token"] = " square"
    mat = np.ma.filled(plot_logit_lens(lens, "circle").axes[0].images[0].get_array(), np.nan)
    assert np.isnan(mat[0, 0]) and mat[0, 1] == pytest.approx(0.001)
    with pytest.raises(InputError, match="'dog' is never in the top k"):
        plot_logit_lens(lens, "dog")
    vision = df.assign(site=df["site"].str.replace("llm", "vision"), prob=0.0)
    with pytest.raises(InputError, match="occurs more than once.*site"):
        plot_logit_lens(pd.concat([df, vision]))
    mat = plot_logit_lens(pd.concat([df, vision]), site="vision.resid_post.1").axes[0].images[0].get_array()
    assert mat.shape == (1, 6) and np.all(mat == 0)
    mat = plot_logit_lens(pd.concat([df, vision]), site="llm").axes[0].images[0].get_array()
    np.testing.assert_allclose(mat, plot_logit_lens(df).axes[0].images[0].get_array())
    with pytest.raises(InputError, match="no rows with site 'mlp'"):
        plot_logit_lens(df, site="mlp")
    two = word_prob_frame(items=(0, 1))
    with pytest.raises(InputError, match="choose one with item="):
        plot_logit_lens(two)
    by_id = plot_logit_lens(two, item="x1").axes[0].images[0].get_array()  # str: item_id; int: batch row b
    assert by_id.shape == (3, 6)
    np.testing.assert_array_equal(plot_logit_lens(two, item=1).axes[0].images[0].get_array(), by_id)
    assert not np.allclose(plot_logit_lens(two, item=0).axes[0].images[0].get_array(), by_id)
    with pytest.raises(InputError, match=r"layer\(s\) \[7\]"):
        plot_logit_lens(df, layers=[7])
    with pytest.raises(InputError, match="'word' column"):
        plot_logit_lens(df.drop(columns=["word"]))
    with pytest.raises(InputError, match=r"lacks column\(s\) \['prob'\]"):
        plot_logit_lens(df.drop(columns=["prob"]))


# ---- confusion -------------------------------------------------------------------------------------------------
def test_confusion_counts_and_row_normalised_colour():
    m = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    labels = ["cooccurrence", "encoder", "decoding"]
    fig = plot_confusion(m, labels)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    assert [t.get_text() for t in ax.texts] == [str(v) for v in m.ravel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_xlabel() == "diagnosed cause" and ax.get_ylabel() == "planted cause"
    long = pd.DataFrame({"planted": ["encoder"] * 4 + ["cooccurrence"] * 10,
                         "diagnosed": ["encoder"] * 3 + ["cooccurrence"] + ["cooccurrence"] * 8 + ["encoder"] * 2})
    ax2 = plot_confusion(long).axes[0]
    assert [t.get_text() for t in ax2.get_yticklabels()] == ["cooccurrence", "encoder"]  # canonical stage order
    assert [t.get_text() for t in ax2.texts] == ["8", "2", "1", "3"]
    counted = pd.DataFrame({"planted": ["a", "a", "b"], "diagnosed": ["a", "b", "b"], "count": [5, 1, 2]})
    assert [t.get_text() for t in plot_confusion(counted).axes[0].texts] == ["5", "1", "0", "2"]
    table = pd.DataFrame(m, index=labels, columns=labels)
    np.testing.assert_allclose(plot_confusion(table, normalize=False).axes[0].images[0].get_array(), m)
    with pytest.raises(InputError, match="needs labels"):
        plot_confusion(m)
    with pytest.raises(InputError, match="2 labels"):
        plot_confusion(m, labels[:2])
