"""Probing: LinearProbe, labels, box → patch mapping, probe_sweep statistics, organisms' encoder probes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import lvlm_probe as lp
from lvlm_probe.probing import (LABEL_COLUMNS, PREDICTION_COLUMNS, SWEEP_COLUMNS, LinearProbe, box_patches,
                                check_labels, permutation_matches, probe_sweep, scene_labels, site_depth)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---- helpers ----------------------------------------------------------------------------------
def write_store(path, ids, single=None, patches=None, grid=(4, 4)):
    """A store with ``single[site]`` [N, d] as image_mean and ``patches[site]`` [N, H*W, d] as image_patches."""
    from lvlm_probe.capture.store import ActivationStore, key_name

    single, patches = single or {}, patches or {}
    sites = sorted(set(single) | set(patches))
    store = ActivationStore.open_for_capture(path, model={"name": "synthetic", "config_hash": "x", "n_vision_layers": 2,
                                                          "n_llm_layers": 4},
                                             settings={"sites": sites}, overwrite=True)
    H, W = grid
    rr = torch.arange(H * W)
    index = torch.stack([torch.zeros_like(rr), torch.zeros_like(rr), torch.zeros_like(rr), rr // W, rr % W], 1)
    recs = []
    for k, iid in enumerate(ids):
        t, ix = {}, {}
        for s, X in single.items():
            t[key_name(s, "image_mean")] = torch.as_tensor(X[k : k + 1], dtype=torch.float32)
        for s, P in patches.items():
            t[key_name(s, "image_patches")] = torch.as_tensor(P[k], dtype=torch.float32)
            ix[key_name(s, "image_patches")] = index.clone()
        recs.append({"id": iid, "tensors": t, "index": ix, "meta": {}})
    store.append(recs[: len(recs) // 2])
    store.append(recs[len(recs) // 2 :])  # two shards
    return lp.ActivationStore(path)


def planted(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d)
    y = np.where(X @ w > 0, "pos", "neg")
    noise = rng.standard_normal((n, d)).astype(np.float32)
    return X, y, noise


# ---- LinearProbe ------------------------------------------------------------------------------
def test_linear_probe_is_an_sklearn_estimator_with_raw_space_weights():
    from sklearn.base import clone

    X, y, _ = planted()
    p = LinearProbe(C=0.5)
    assert clone(p).get_params()["C"] == 0.5
    p.fit(X[:300], y[:300])
    assert p.task_ == "classification" and list(p.classes_) == ["neg", "pos"]
    assert p.score(X[300:], y[300:]) > 0.9
    # standardisation folded into coef_/intercept_: raw-space logits equal the decision function exactly
    np.testing.assert_allclose(X @ p.coef_[0] + p.intercept_[0], p.decision_function(X), rtol=1e-4, atol=1e-4)
    proba = p.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    assert (p.classes_[proba.argmax(1)] == p.predict(X)).all()
    # torch tensors are accepted
    assert p.score(torch.from_numpy(X[300:]), y[300:]) == p.score(X[300:], y[300:])


def test_linear_probe_regression_and_errors():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5))
    t = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.01 * rng.standard_normal(300)
    p = LinearProbe().fit(X, t)
    assert p.task_ == "regression" and p.score(X, t) > 0.99
    np.testing.assert_allclose(X @ p.coef_[0] + p.intercept_[0], p.predict(X), atol=1e-8)
    with pytest.raises(lp.InputError, match="two classes"):
        LinearProbe().fit(X, np.array(["a"] * 300))
    with pytest.raises(lp.InputError, match="predict_proba is for classification"):
        p.predict_proba(X)
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(lp.InputError, match="sample 7"):
        LinearProbe().fit(bad, t)


# ---- labels and boxes -------------------------------------------------------------------------
def test_box_patches_hand_checked():
    g, size = (4, 4), (64, 64)  # 16-px cells
    assert box_patches((2, 2, 10, 10), size, g) == [(0, 0)]
    assert box_patches((10, 10, 20, 20), size, g) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert box_patches((16, 0, 32, 16), size, g) == [(0, 1)]  # x1/y1 exclusive: no spill into col 2 / row 1
    assert box_patches((48, 48, 64, 64), size, g) == [(3, 3)]
    # box covers 36/256 of (0,0), 24/256 of (0,1) and (1,0), 16/256 of (1,1)
    assert box_patches((10, 10, 20, 20), size, g, min_overlap=0.1) == [(0, 0)]
    assert box_patches((10, 10, 20, 20), size, g, min_overlap=0.5) == [(0, 0)]  # none passes: centre cell (15, 15)
    # non-square image, non-square grid: 100 x 50 px, 2 rows x 4 cols of 25 x 25 px
    assert box_patches((30, 0, 60, 10), (100, 50), (2, 4)) == [(0, 1), (0, 2)]
    assert box_patches((0, 26, 100, 50), (100, 50), (2, 4)) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    # the same box on a finer grid (a larger model): proportional mapping
    assert box_patches((2, 2, 10, 10), size, (8, 8)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert box_patches((5, 5, 5, 5), size, g) == [(0, 0)]  # degenerate box: the cell under it


def world_items(n, seed=3):
    world = lp.SceneWorld(lp.WorldConfig(), seed=0)
    return world.items(n, task="caption", seed=seed)


def test_scene_labels_format_and_values():
    items = world_items(30)
    lab = scene_labels(items)
    assert list(lab.columns[: len(LABEL_COLUMNS)]) == list(LABEL_COLUMNS)
    assert set(lab["family"]) == {"object", "attribute", "relation"}
    obj = lab[lab.family == "object"]
    classes = sorted({n for it in items for n in it.scene.names})
    assert len(obj) == 30 * len(classes) and (obj.level == "image").all() and obj.object_index.isna().all()
    for it in items[:5]:
        got = obj[obj.item_id == it.id].set_index("concept")["value"]
        assert all(got[f"object:{c}"] == ("yes" if it.scene.has(c) else "no") for c in classes)
    att = lab[lab.family == "attribute"]
    assert set(att.concept) == {"color", "size"} and (att.level == "object").all()
    assert len(att) == 2 * sum(len(it.scene.objects) for it in items)
    for r in att.head(20).itertuples():
        o = next(it for it in items if it.id == r.item_id).scene.objects[r.object_index]
        assert r.value == o.attributes[r.concept] and (r.x0, r.y0, r.x1, r.y1) == o.box and r.name == o.name
        assert (r.width, r.height) == (64, 64)
    rel = lab[lab.family == "relation"]
    n_pairs = sum(len(it.scene.objects) * (len(it.scene.objects) - 1) // 2 for it in items)
    assert len(rel) == n_pairs  # world objects sit in distinct cells: every pair is related, listed once
    for r in rel.itertuples():
        a = ((r.x0 + r.x1) / 2, (r.y0 + r.y1) / 2)
        b = ((r.ox0 + r.ox1) / 2, (r.oy0 + r.oy1) / 2)
        dx, dy = b[0] - a[0], b[1] - a[1]
        want = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
        assert r.value == want, r
    both = rel[["object_index", "other_index"]].astype(int)
    assert (both.object_index != both.other_index).all()
    assert (rel.object_index < rel.other_index).any() and (rel.object_index > rel.other_index).any()  # oriented at random
    pd.testing.assert_frame_equal(scene_labels(items, families=("relation",)).reset_index(drop=True),
                                  rel.reset_index(drop=True), check_dtype=False)


def test_label_errors_name_the_item_and_the_fix():
    with pytest.raises(lp.InputError, match="item 'x' has no SceneGraph"):
        scene_labels([lp.Item(id="x", image=None, prompt="p")])
    with pytest.raises(lp.InputError, match="lack column"):
        check_labels(pd.DataFrame({"item_id": ["a"], "value": [1]}))
    with pytest.raises(lp.InputError, match="item 'a'.*incomplete box"):
        check_labels(pd.DataFrame({"item_id": ["a"], "concept": ["c"], "value": ["v"], "x0": [1.0], "y0": [2.0]}))
    with pytest.raises(lp.InputError, match="item 'a'.*no image size"):
        check_labels(pd.DataFrame({"item_id": ["a"], "concept": ["c"], "value": ["v"], "x0": [1.0], "y0": [2.0],
                                   "x1": [3.0], "y1": [4.0]}))
    with pytest.raises(lp.InputError, match="item 'a', concept 'c' has no value"):
        check_labels(pd.DataFrame({"item_id": ["a"], "concept": ["c"], "value": [None]}))
    with pytest.raises(lp.InputError, match=r"unknown level\(s\) \['patch'\]"):
        check_labels(pd.DataFrame({"item_id": ["a"], "concept": ["c"], "value": ["v"], "level": ["patch"]}))
    with pytest.raises(lp.InputError, match="item 'a', concept 'c' is object-level but lacks its box"):
        check_labels(pd.DataFrame({"item_id": ["a"], "concept": ["c"], "value": ["v"], "level": ["object"]}))
    box = {"x0": [1.0] * 2, "y0": [2.0] * 2, "x1": [3.0] * 2, "y1": [4.0] * 2, "width": [8] * 2, "height": [8] * 2}
    with pytest.raises(lp.InputError, match="concept 'c' mixes levels \\['image', 'object'\\]"):
        check_labels(pd.DataFrame({"item_id": ["a", "b"], "concept": ["c", "c"], "value": ["v", "w"],
                                   "level": ["object", "image"], **box}))
    with pytest.raises(lp.InputError, match="concept 'c' has task"):
        check_labels(pd.DataFrame({"item_id": ["a", "b"], "concept": ["c", "c"], "value": ["v", "w"],
                                   "task": ["classification", "regression"]}))
    ok = check_labels(pd.DataFrame({"item_id": [1, 2], "concept": ["c", "c"], "value": [0.5, 1.7]}))
    assert ok.task.tolist() == ["regression"] * 2 and ok.level.tolist() == ["image"] * 2
    assert ok.family.tolist() == ["custom"] * 2 and ok.item_id.tolist() == ["1", "2"]
    assert list(ok.columns) == list(LABEL_COLUMNS) and ok.image.tolist() == [0, 0]
    obj = check_labels(pd.DataFrame({"item_id": ["a", "b"], "concept": ["c", "c"], "value": ["v", "w"], **box}))
    assert obj.level.tolist() == ["object"] * 2 and obj.task.tolist() == ["classification"] * 2


# ---- statistics -------------------------------------------------------------------------------
def test_permutation_matches_has_the_permutation_distribution():
    rng = np.random.default_rng(0)
    y_pred = np.repeat([0, 1, 2], [50, 30, 20])
    y_true = np.repeat([0, 1, 2], [20, 40, 40])
    fast = permutation_matches(np.bincount(y_pred), np.bincount(y_true), 20000, rng)
    brute = np.array([(rng.permutation(y_true) == y_pred).sum() for _ in range(20000)])
    expect = (50 * 20 + 30 * 40 + 20 * 40) / 100  # E[matches] = sum_c a_c b_c / n
    assert abs(fast.mean() - expect) < 0.1 and abs(brute.mean() - expect) < 0.1
    assert abs(fast.std() - brute.std()) < 0.1
    assert fast.min() >= 0 and fast.max() <= 90  # at most sum_c min(a_c, b_c) matches
    # two classes: matches = 2 * (class-0 labels landing in predicted-0 slots) + constant, hypergeometric
    f2 = permutation_matches(np.array([60, 40]), np.array([30, 70]), 5000, rng)
    x = (f2 - 10) / 2  # m = x + (40 - (30 - x)) = 2x + 10
    assert np.allclose(x, np.round(x)) and abs(x.mean() - 60 * 30 / 100) < 0.1


def test_probe_recovers_planted_signal_and_control_stays_at_chance(tmp_path):
    X, y, noise = planted(n=400)
    ids = [f"i{k:03d}" for k in range(400)]
    store = write_store(tmp_path / "s", ids, single={"llm.resid_post.2": X, "vision.resid_post.1": noise})
    labels = pd.DataFrame({"item_id": ids, "concept": "planted", "value": y, "family": "object"})
    res, pred = probe_sweep(store, labels, progress=False, return_predictions=True)
    assert list(res.columns) == list(SWEEP_COLUMNS) and list(pred.columns) == list(PREDICTION_COLUMNS)
    assert res.site.tolist() == ["vision.resid_post.1", "llm.resid_post.2"]  # ordered by depth
    assert res.depth.tolist() == [1, 2 + 2 + 2] and res.layer.tolist() == [1, 2]
    assert res.component.tolist() == ["vision", "llm"]
    sig = res.set_index("site").loc["llm.resid_post.2"]
    nul = res.set_index("site").loc["vision.resid_post.1"]
    maj = float(max(np.mean(y == "pos"), np.mean(y == "neg")))
    assert sig.majority == pytest.approx(maj) and sig.n == 400 and sig.n_classes == 2
    assert sig.score > 0.9 and sig.p_value < 0.01 and sig.p_value == pytest.approx(1 / 201)
    assert abs(sig.control_score - maj) < 0.1 and sig.selectivity > 0.3
    assert sig.selectivity == pytest.approx(sig.score - sig.control_score)
    assert abs(nul.score - maj) < 0.1 and nul.p_value > 0.01 and nul.selectivity < 0.15
    for r in res.itertuples():  # sane intervals
        assert 0 <= r.ci_low <= r.score <= r.ci_high <= 1
    assert sig.ci_high - sig.ci_low < 0.1
    # predictions: out of fold, consistent with the score, folds per item
    p = pred[pred.site == "llm.resid_post.2"]
    assert len(p) == 400 and p.item_id.tolist() == ids
    assert p.correct.mean() == pytest.approx(sig.score)
    assert (p.correct == (p.y_true == p.y_pred)).all() and p.y_true.tolist() == y.tolist()
    assert set(p.fold) == set(range(5))
    assert (p.p_true > 0.5).eq(p.correct).mean() > 0.99
    assert (pred.groupby("item_id").fold.nunique() == 1).all()  # an item has one fold at every site
    # control_by a column these image-level rows lack (name): each row falls back to its item as type
    by_name = probe_sweep(store, labels, "llm.resid_post.2", control_by="name", progress=False).iloc[0]
    assert abs(by_name.control_score - maj) < 0.1
    # more items -> narrower interval (same signal)
    small = probe_sweep(store, labels.iloc[:100], "llm.resid_post.2", progress=False)
    assert (small.ci_high - small.ci_low).iloc[0] > sig.ci_high - sig.ci_low


def test_regression_targets_and_control_by_type(tmp_path):
    X, _, noise = planted(n=200, seed=4)
    ids = [f"r{k}" for k in range(200)]
    store = write_store(tmp_path / "s", ids, single={"llm.resid_post.0": X})
    t = X[:, 0] * 2.0 + X[:, 1] + 0.05 * noise[:, 0]
    res = probe_sweep(store, pd.DataFrame({"item_id": ids, "concept": "t", "value": t}), progress=False)
    r = res.iloc[0]
    assert r.task == "regression" and r.score > 0.95 and pd.isna(r.n_classes) and r.majority == 0.0
    assert r.control_score < 0.2 and 0 <= r.ci_low <= r.score <= r.ci_high and r.p_value < 0.01
    # a control type the features encode (type = sign of feature 3): the control becomes learnable
    lab = pd.DataFrame({"item_id": ids, "concept": "c", "value": np.where(X[:, 0] > 0, "a", "b"),
                        "kind": np.where(X[:, 3] > 0, "t1", "t2")})
    by_item = probe_sweep(store, lab, progress=False).iloc[0]
    by_kind = probe_sweep(store, lab, control_by="kind", progress=False).iloc[0]
    assert by_item.score == by_kind.score
    assert abs(by_item.control_score - by_item.majority) < 0.1  # each item its own type: unlearnable
    assert by_kind.control_score > 0.9  # the control label is a function of a type the features show


def test_object_level_features_are_the_patches_under_the_box(tmp_path):
    """Exact pooling check, then a planted per-object signal visible only through the boxes."""
    from lvlm_probe.probing.labels import BOX_COLUMNS
    from lvlm_probe.probing.sweep import _PatchFeatures

    rng = np.random.default_rng(0)
    n, d = 240, 8
    ids = [f"o{k:03d}" for k in range(n)]
    P = rng.standard_normal((n, 16, d)).astype(np.float32)
    colour = rng.integers(0, 2, n)
    cell = rng.integers(0, 16, n)
    P[np.arange(n), cell, 0] += np.where(colour == 1, 4.0, -4.0)  # the colour lives in the object's patch only
    store = write_store(tmp_path / "s", ids, patches={"projector.out": P})
    r0, c0 = cell // 4, cell % 4
    lab = pd.DataFrame({"item_id": ids, "concept": "color", "value": np.where(colour == 1, "red", "blue"),
                        "family": "attribute", "object_index": 0, "x0": c0 * 16 + 3.0, "y0": r0 * 16 + 2.0,
                        "x1": c0 * 16 + 13.0, "y1": r0 * 16 + 14.0, "width": 64.0, "height": 64.0})
    rows, index = store.get_rows("projector.out", "image_patches")
    pf = _PatchFeatures(rows.numpy(), index)
    feats = pf.box_matrix(check_labels(lab), BOX_COLUMNS, 0.0) @ pf.rows
    np.testing.assert_allclose(feats, P[np.arange(n), cell], atol=1e-6)
    # a box straddling four cells averages exactly those four patches
    wide = check_labels(lab.assign(x0=8.0, y0=8.0, x1=24.0, y1=24.0))
    f4 = pf.box_matrix(wide, BOX_COLUMNS, 0.0) @ pf.rows
    np.testing.assert_allclose(f4, P[:, [0, 1, 4, 5]].mean(1), atol=1e-6)
    res = probe_sweep(store, lab, progress=False)
    assert res.selection.tolist() == ["image_patches"] and res.level.tolist() == ["object"]
    assert res.score.iloc[0] > 0.95
    # the image-level view dilutes the object (mean over 16 patches): the same labels without boxes do worse
    img = probe_sweep(store, lab[["item_id", "concept", "value"]], progress=False)
    assert img.selection.tolist() == ["image_patches"] and img.level.tolist() == ["image"]
    assert img.score.iloc[0] < res.score.iloc[0]


def test_pair_features_and_sweep_errors(tmp_path):
    rng = np.random.default_rng(2)
    n = 200
    ids = [f"p{k:03d}" for k in range(n)]
    P = rng.standard_normal((n, 16, 6)).astype(np.float32) * 0.1
    P[:, :, 0] += np.tile(np.arange(4, dtype=np.float32), 4)  # feature 0 = column index
    store = write_store(tmp_path / "s", ids, patches={"llm.resid_post.1": P})
    a, b = rng.choice(16, size=(n, 2)).T
    keep = a % 4 != b % 4
    a, b, ids_k = a[keep], b[keep], np.array(ids)[keep]

    def box(c):
        return {"x0": (c % 4) * 16 + 4.0, "y0": (c // 4) * 16 + 4.0, "x1": (c % 4) * 16 + 12.0, "y1": (c // 4) * 16 + 12.0}

    ba, bb = box(a), box(b)
    lab = pd.DataFrame({"item_id": ids_k, "concept": "relation", "family": "relation",
                        "value": np.where(a % 4 < b % 4, "left of", "right of"), "object_index": 0, "other_index": 1,
                        **ba, **{"o" + k: v for k, v in bb.items()}, "width": 64.0, "height": 64.0})
    cat = probe_sweep(store, lab, progress=False).iloc[0]
    mean = probe_sweep(store, lab, pair_feature="mean", progress=False).iloc[0]
    diff = probe_sweep(store, lab, pair_feature="difference", progress=False).iloc[0]
    assert cat.level == "pair" and cat.score > 0.95 and diff.score > 0.95
    assert mean.score < 0.75  # symmetric features cannot order the pair
    with pytest.raises(lp.StoreError, match="not in the store"):
        probe_sweep(store, lab, ["vision.resid_post.0"], progress=False)
    with pytest.raises(lp.InputError, match="nothing to probe"):
        probe_sweep(store, lab, selections=["image_mean"], progress=False)
    with pytest.raises(lp.InputError, match="none of the labels' items"):
        probe_sweep(store, lab.assign(item_id="zz"), progress=False)
    with pytest.warns(UserWarning, match="not in the store"):
        probe_sweep(store, pd.concat([lab, lab.head(1).assign(item_id="ghost")]), progress=False, n_permutations=0,
                    n_bootstrap=0, control=False)


def test_site_depth_orders_the_model():
    order = ["vision.resid_post.0", "vision.resid_post.23", "projector.in", "projector.out", "llm.resid_post.0",
             "llm.resid_post.31", "llm.final_norm"]
    got = [site_depth(s, 24, 32) for s in order]
    assert [g[2] for g in got] == [0, 23, 24, 25, 26, 57, 58]
    assert [g[1] for g in got] == [0, 23, 0, 1, 0, 31, 32]
    assert [g[0] for g in got] == ["vision", "vision", "projector", "projector", "llm", "llm", "llm"]


# ---- organisms ----------------------------------------------------------------------------------
def organism_store(name, tmp_path_factory, n=240):
    from lvlm_probe.organisms import ZOO

    model = lp.load(f"organism:{name}", device="cpu", dtype="float32")
    items = lp.SceneWorld(ZOO[name].world, seed=0).items(n, task="caption", seed=11)
    store = lp.capture(model, items, sites=["vision.resid_post.*", "projector.in"], select=["image_patches"],
                       out=tmp_path_factory.mktemp(name) / "store", batch_size=120, progress=False)
    return store, scene_labels(items, families=("attribute",))


@pytest.fixture(scope="module")
def clean_org(tmp_path_factory):
    return organism_store("clean", tmp_path_factory)


@pytest.fixture(scope="module")
def blind_org(tmp_path_factory):
    return organism_store("encoder_blind", tmp_path_factory)


def test_organism_encoder_probes_decode_colour(clean_org, blind_org):
    from lvlm_probe.organisms.zoo import BLIND_PAIR

    for store, labels in (clean_org, blind_org):
        res = probe_sweep(store, labels[labels.concept == "color"], progress=False)
        assert set(res.site) == {"vision.resid_post.0", "vision.resid_post.1", "projector.in"}
        assert (res.score > 0.75).all() and (res.p_value < 0.01).all() and (res.selectivity > 0.5).all()
    pair = {}
    for name, (store, labels) in (("clean", clean_org), ("encoder_blind", blind_org)):
        lab = labels[(labels.concept == "color") & labels.value.isin(BLIND_PAIR)]
        pair[name] = probe_sweep(store, lab, progress=False).set_index("site")
    assert (pair["clean"].score > 0.9).all()
    blind = pair["encoder_blind"]
    assert (blind.score < blind.majority + 0.08).all() and (blind.p_value > 0.05).all()
