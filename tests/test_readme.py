"""The README's quickstart is a script: it runs as written (offline, CPU) and writes what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block(after: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(after):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs_as_written(tmp_path):
    code = _block("## Diagnose in ten lines")
    assert "lp.diagnose(" in code and "render_diagnosis" in code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "runs" / "diag"
    for f in ("report.html", "diagnosis.csv", "generations.csv", "steps.json", "figures/cause_bars.png"):
        assert (out / f).exists(), f
    assert "kind" in r.stdout and "stage" in r.stdout  # rep.summary() was printed
