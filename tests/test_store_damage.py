"""Damaged activation stores: every kind of damage ends in a StoreError that names the file (and line), never a raw
safetensors / JSON / index error or a silently short result. Also: version-1 stores still read and resume."""

import json
import random
import shutil

import pytest
import torch

import lvlm_probe as lp
from conftest import rand_image

SITES, SELECT = ["llm.resid_post.1", "projector.out"], ["image_mean", "image_patches"]


@pytest.fixture(scope="module")
def pristine(llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "s"
    items = [lp.Item(id=f"d{k}", image=rand_image(k), prompt="what is in the image ?") for k in range(7)]
    return lp.capture(llava, items, sites=SITES, select=SELECT, out=out, batch_size=3, shard_items=3,
                      progress=False).path


@pytest.fixture
def store_dir(pristine, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(pristine, d)
    return d


def read_everything(path):
    s = lp.ActivationStore(path)
    for site, sel in s.keys():
        s.get(site, sel)
        s.get_rows(site, sel)
        list(s.iter_items(site, sel))
    return s


def shard(d, k=1):
    return sorted((d / "shards").glob("*.safetensors"))[k]


_rng = random.Random(7)
TRUNCATE = sorted(_rng.sample(range(1, 95), 12))  # percent of the shard kept


@pytest.mark.parametrize("keep", TRUNCATE)
def test_truncated_shard_names_the_file(store_dir, keep):
    f = shard(store_dir)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * keep // 100])
    with pytest.raises(lp.StoreError, match=f.name):
        read_everything(store_dir)


@pytest.mark.parametrize("how", ["empty", "deleted", "garbage", "foreign", "swapped", "short_rows", "no_key"])
def test_damaged_shard_names_the_file(store_dir, how, llava, tmp_path):
    f, g = shard(store_dir, 1), shard(store_dir, 2)
    if how == "empty":
        f.write_bytes(b"")
    elif how == "deleted":
        f.unlink()
    elif how == "garbage":
        f.write_bytes(bytes(_rng.randrange(256) for _ in range(4096)))
    elif how == "foreign":  # a shard of another store with the same keys
        other = lp.capture(llava, [lp.Item(id="x", image=rand_image(99), prompt="what ?")], sites=SITES,
                           select=SELECT, out=tmp_path / "other", progress=False)
        shutil.copy(next((other.path / "shards").glob("*.safetensors")), f)
    elif how == "swapped":
        a, b = f.read_bytes(), g.read_bytes()
        f.write_bytes(b)
        g.write_bytes(a)
    else:  # rewritten with a row missing, or without a tensor, but the right item list
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(f), framework="pt") as fh:
            meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
        key = "llm.resid_post.1|image_mean"
        if how == "short_rows":
            tensors[key] = tensors[key][:-1]
        else:
            del tensors[key]
        save_file(tensors, str(f), metadata=meta)
    with pytest.raises(lp.StoreError, match=f.name if how != "swapped" else "shard-00000[12]"):
        read_everything(store_dir)


MANIFESTS = {
    "not_json": b"{\"format\": ", "binary": b"\xff\xfe\x00garbage", "list": b"[1, 2]", "empty": b"",
    "foreign": json.dumps({"name": "my web app"}).encode(),
    "version": None, "model_missing": None, "model_string": None, "settings_list": None,
}


@pytest.mark.parametrize("how", sorted(MANIFESTS))
def test_damaged_manifest_names_the_file(store_dir, how):
    mf = store_dir / "manifest.json"
    m = json.loads(mf.read_text())
    if MANIFESTS[how] is not None:
        mf.write_bytes(MANIFESTS[how])
    else:
        if how == "version":
            m["version"] = 99
        elif how == "model_missing":
            del m["model"]
        elif how == "model_string":
            m["model"] = "llava"
        else:
            m["settings"] = []
        mf.write_text(json.dumps(m))
    with pytest.raises(lp.StoreError, match="manifest.json") as err:
        lp.ActivationStore(store_dir)
    assert "\n" not in str(err.value)


JOURNAL_DAMAGE = ["garbage_line", "list_line", "shard_without_items", "items_not_strings", "unknown_record",
                  "duplicate_item", "binary_line"]


@pytest.mark.parametrize("how", JOURNAL_DAMAGE)
def test_damaged_journal_line_names_file_and_line(store_dir, how):
    j = store_dir / "index.jsonl"
    lines = j.read_text().splitlines()
    first = json.loads(lines[0])
    bad = {
        "garbage_line": "{not json", "list_line": "[1, 2]",
        "shard_without_items": json.dumps({"shard": {"file": "shards/x.safetensors"}}),
        "items_not_strings": json.dumps({"shard": {**first["shard"], "file": "shards/y", "items": [1, 2]}}),
        "unknown_record": json.dumps({"hello": 1}),
        "duplicate_item": json.dumps({"shard": {**first["shard"], "file": "shards/z.safetensors"}}),
        "binary_line": "\udcff",
    }[how]
    lines.insert(1, bad)
    j.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    with pytest.raises(lp.StoreError, match=r"index\.jsonl line 2"):
        lp.ActivationStore(store_dir)


@pytest.mark.parametrize("cut", [1, 5, 20, 60])
def test_torn_last_journal_line_is_ignored_and_repaired(store_dir, cut, llava):
    """A writer killed mid-append leaves part of a line: readers skip it; the next capture cuts it off."""
    j = store_dir / "index.jsonl"
    before = lp.ActivationStore(store_dir).item_ids
    j.write_bytes(j.read_bytes() + b'{"shard": {"file": "shards/shard-000009.safetensors", "items": ["q"]}}'[:cut])
    assert lp.ActivationStore(store_dir).item_ids == before
    items = [lp.Item(id=f"d{k}", image=rand_image(k), prompt="what is in the image ?") for k in range(8)]
    lp.capture(llava, items, sites=SITES, select=SELECT, out=store_dir, batch_size=3, shard_items=3, progress=False)
    again = read_everything(store_dir)
    assert again.item_ids == before + ["d7"]
    assert j.read_bytes().endswith(b"\n")


def test_version_1_store_reads_and_resumes(store_dir, llava):
    """A store written by lvlm_probe before the journal (everything in manifest.json) reads as before; resuming
    converts it."""
    s = lp.ActivationStore(store_dir)
    m = s.manifest
    v1 = {**{k: m[k] for k in ("format", "created", "model", "settings", "library", "keys", "shards", "items",
                               "failed")}, "version": 1}
    (store_dir / "manifest.json").write_text(json.dumps(v1))
    (store_dir / "index.jsonl").unlink()
    old = read_everything(store_dir)
    assert old.item_ids == s.item_ids
    assert torch.equal(old.get("projector.out", "image_mean"), s.get("projector.out", "image_mean"))
    items = [lp.Item(id=f"d{k}", image=rand_image(k), prompt="what is in the image ?") for k in range(9)]
    lp.capture(llava, items, sites=SITES, select=SELECT, out=store_dir, batch_size=3, shard_items=3, progress=False)
    new = read_everything(store_dir)
    assert new.manifest["version"] == 2 and new.item_ids == [f"d{k}" for k in range(9)]
    assert torch.equal(new.get("projector.out", "image_mean")[:7], s.get("projector.out", "image_mean"))


def test_reader_refuses_to_append(pristine):
    with pytest.raises(lp.StoreError, match="opened for reading"):
        lp.ActivationStore(pristine).record_failure("x", "why")


def test_a_store_written_before_tiles_reads_with_tile_0_and_refuses_to_mix(tmp_path, monkeypatch):
    """image_patches rows are indexed (item, image, tile, row, col); a store whose rows were indexed without the
    tile reads with tile 0, and appending rows of the new layout to it is refused with the fix."""
    from lvlm_probe.capture import store as S

    def record(iid, ncol):
        rr = torch.arange(4)
        cols = [torch.zeros_like(rr)] * (ncol - 2) + [rr // 2, rr % 2]
        return {"id": iid, "tensors": {"projector.out|image_patches": torch.ones(4, 3)},
                "index": {"projector.out|image_patches": torch.stack(cols, 1)}, "meta": {}}

    model = {"name": "synthetic", "config_hash": "x", "n_vision_layers": 1, "n_llm_layers": 1}
    monkeypatch.setitem(S.INDEX_COLUMNS, "image_patches", ("item", "image", "row", "col"))
    st = S.ActivationStore.open_for_capture(tmp_path / "old", model=model, settings={"sites": ["projector.out"]})
    st.append([record("a", 4)])
    monkeypatch.undo()
    rows, index = lp.ActivationStore(tmp_path / "old").get_rows("projector.out", "image_patches")
    assert list(index.columns) == ["item_id", "image", "tile", "row", "col"] and set(index.tile) == {0}
    assert index[["row", "col"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    st = S.ActivationStore.open_for_capture(tmp_path / "old", model=model, settings={"sites": ["projector.out"]})
    with pytest.raises(S.StoreError, match="before image tokens had a tile.*overwrite=True"):
        st.append([record("b", 5)])
    with pytest.raises(S.StoreError, match=r"index of shape \(4, 4\)"):
        st.append([record("c", 4)])
