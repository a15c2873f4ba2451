import json

import pandas as pd

import lvlm_probe as lp
from conftest import rand_image
from lvlm_probe.cli import main


def test_info_and_capture_from_items_file(llava_dir, tmp_path, capsys):
    assert main(["info", str(llava_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llava" and "llm.resid_post.1" in info["sites"]
    for k in range(3):
        rand_image(k).save(tmp_path / f"img{k}.png")
    lines = [json.dumps({"id": f"i{k}", "image": f"img{k}.png", "prompt": "what is in the image ?"}) for k in range(3)]
    lines.append(json.dumps({"id": "gone", "image": "missing.png", "prompt": "what ?"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["capture", "--model", str(llava_dir), "--items", str(tmp_path / "items.jsonl"), "--sites",
               "llm.resid_post.*", "--select", "image_mean", "--out", str(tmp_path / "store"), "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 3 and list(out["failed"]) == ["gone"]
    assert lp.ActivationStore(tmp_path / "store").get("llm.resid_post.*", "image_mean").shape[:2] == (3, 2)


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_demo_writes_report(tmp_path):
    from lvlm_probe.demo import run_demo

    s = run_demo(tmp_path / "demo", n=16, batch_size=8, max_new_tokens=32, progress=False)
    assert s["n_items"] == 16 and not s["failed"] and "cooccurrence" in s["model"]
    assert sum(s["levels"].values()) == s["n_errors"] > 0
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Object errors" in html and "Manifest" in html
    assert (tmp_path / "demo" / "figures" / "cause_bars.pdf").exists()
    d = pd.read_csv(tmp_path / "demo" / "diagnosis.csv")
    assert {"item_id", "kind", "level", "stage"} <= set(d.columns)
    assert set(d.kind) <= {"object", "attribute", "relation"}
    # the planted bias shows up as object hallucinations of the square, traced to the data level
    square = d[(d.kind == "object") & (d.polarity == "hallucinated") & (d.claimed == "square")]
    assert len(square) and (square.level == "data").mean() >= 0.5
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["n_errors"] == s["n_errors"]


def _run(*args: str, env_extra: dict | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)


def test_help_eval_and_scoring_import_no_torch():
    code = ("import sys\nfrom lvlm_probe.cli import build_parser\nimport lvlm_probe.benchmarks as b\n"
            "b.parse_answer('Yes.')\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'pandas') if m in sys.modules))")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip() == "[]"
    r = _run("-m", "lvlm_probe", "--help")
    assert r.returncode == 0 and "diagnose" in r.stdout


def test_version_card_and_one_line_errors(tmp_path):
    r = _run("-m", "lvlm_probe", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"lvlm-probe {lp.__version__}"
    r = _run("-m", "lvlm_probe", "organisms", "card", "organism:clean")
    assert r.returncode == 0 and r.stdout.startswith("# Organism `clean`")
    for model, expect in (("./no_such_dir", "is not a directory and not a hub id"),
                          ("llava-hf/not-cached-anywhere", "offline mode is on (HF_HUB_OFFLINE=1)")):
        r = _run("-m", "lvlm_probe", "info", model)
        assert r.returncode == 2 and expect in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _run("-m", "lvlm_probe", "--debug", "info", "./no_such_dir")
    assert r.returncode != 0 and "Traceback" in r.stderr
