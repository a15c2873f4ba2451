"""docs/howto/store-from-other-tools.md: its 'Reading without lvlm_probe' code reads a real store exactly as
lp.ActivationStore does (the page is the format's public description)."""

import re
from pathlib import Path

import numpy as np

import lvlm_probe as lp
from conftest import rand_image

DOC = Path(__file__).resolve().parents[1] / "docs" / "howto" / "store-from-other-tools.md"


def test_the_documented_reader_matches_the_store(llava, tmp_path, monkeypatch):
    code = re.search(r"## Reading without lvlm_probe\n\n```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    items = [lp.Item(id=f"i{k}", image=rand_image(k), prompt="what is in the image ?") for k in range(5)]
    monkeypatch.chdir(tmp_path)
    lp.capture(llava, items, sites=["llm.resid_post.1"], select=["generated"], generate=4, out="runs/store",
               shard_items=2, batch_size=2, progress=False)
    with (tmp_path / "runs/store/index.jsonl").open("a") as fh:
        fh.write('{"shard": {"file": "x", "it')  # a torn last line
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    rows, index = lp.ActivationStore("runs/store").get_rows("llm.resid_post.1", "generated")
    assert np.array_equal(ns["X"], rows.numpy())
    assert ns["idx"][list(index.columns)].astype(str).values.tolist() == index.astype(str).values.tolist()
    assert sorted(ns["meta"].item_id) == [it.id for it in items]
