"""Model cards: what each organism is, how it was planted and trained, and what it measurably does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lvlm_probe._atomic import atomic_write_text
from lvlm_probe.organisms.zoo import get_spec


#: Yes/no task families of ``organisms check`` and how far above 0.5 still counts as chance level in a card.
YES_NO_TASKS: tuple[str, ...] = ("exists", "relation")
CHANCE_MARGIN = 0.1


def read_behaviour(ckpt: Path) -> dict[str, Any]:
    """Measured behaviour stored beside a checkpoint (``behaviour.json``: zoo name -> check result)."""
    p = Path(ckpt) / "behaviour.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def record_behaviour(ckpt: Path, result: dict[str, Any]) -> None:
    """Store one ``check_organism`` result under its organism name (atomic rewrite)."""
    data = read_behaviour(ckpt)
    data[result["organism"]] = result
    atomic_write_text(Path(ckpt) / "behaviour.json", json.dumps(data, indent=1))


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def render_card(name: str, ckpt: Path) -> str:
    """Markdown model card of organism ``name`` whose checkpoint is ``ckpt``."""
    spec = get_spec(name)
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "organism.json").read_text(encoding="utf-8")) if (ckpt / "organism.json").is_file() else {}
    beh = read_behaviour(ckpt).get(name)
    size_kb = (ckpt / "model.safetensors").stat().st_size / 1024 if (ckpt / "model.safetensors").is_file() else None
    lines = [
        f"# Organism `{name}`",
        "",
        f"- **Planted cause**: {spec.cause} — {spec.component} (level: **{spec.level}**)",
        f"- **How planted** (the one factor that differs from `clean`): {spec.planted}",
        f"- **Expected signature**: {spec.signature}",
        f"- **Checkpoint**: `{spec.checkpoint}`" + (f" ({size_kb:.0f} KiB fp16 safetensors)" if size_kb else ""),
    ]
    if spec.run_settings:
        lines.append(f"- **Run settings**: `{json.dumps(spec.run_settings)}`")
    lines += ["", "## Measured behaviour", ""]
    if beh:
        lines += [
            f"Held-out scenes, seed {beh['seed']}, n = {beh['n']} per set (`lvlm-probe organisms check {name} "
            f"--seed {beh['seed']} --n {beh['n']} --json`).",
            "",
            "| metric | value |", "|---|---|",
            f"| task accuracy (mean) | {_fmt(beh['task_accuracy'])} |",
            *[f"| {k} | {_fmt(v)} |" for k, v in beh["tasks"].items()],
        ]
        if beh.get("planted_error_rate") is not None:
            lines += [
                f"| planted error rate: {beh['planted_metric']} | **{_fmt(beh['planted_error_rate'])}** |",
                f"| same rate for `clean` | {_fmt(beh.get('clean_planted_error_rate'))} |",
            ]
            for k, v in (beh.get("planted_details") or {}).items():
                cv = (beh.get("clean_planted_details") or {}).get(k)
                lines.append(f"| {k} | {_fmt(v)}" + (f" (clean {_fmt(cv)})" if cv is not None else "") + " |")
        at_chance = [f"{k} {_fmt(beh['tasks'][k])}" for k in YES_NO_TASKS
                     if k in beh["tasks"] and beh["tasks"][k] <= 0.5 + CHANCE_MARGIN]
        if at_chance:
            verb = "is" if len(at_chance) == 1 else "are"
            lines += ["", f"**Known limitation**: {' and '.join(at_chance)} {verb} at the chance level of a yes/no "
                          "question (0.5): the recipe does not teach this skill (a relation question needs two "
                          "objects found and their positions compared), so these answers are not a planted cause "
                          "(docs/organisms.md, 'What the existence recipe does not teach')."]
    else:
        lines.append("Not measured yet: run `lvlm-probe organisms check " + name + " --json`.")
    if meta:
        secs = meta.get("seconds", {})
        lines += [
            "", "## Training", "",
            f"- Architecture: CLIP vision tower + Llama LM, `{json.dumps(meta.get('arch'))}`, "
            f"{meta.get('n_parameters', 0):,} parameters.",
            f"- Recipe: `{json.dumps(meta.get('train'))}`",
            f"- World: `{json.dumps(meta.get('world'))}`",
            f"- Seed {meta.get('seed')}, {meta.get('threads')} CPU thread(s), torch {meta.get('torch')}: "
            + (f"total {secs.get('total')} s." if meta.get("base") else
               f"stage 0 {secs.get('stage0')} s, total {secs.get('total')} s."),
        ]
        if meta.get("base"):
            lines.append(f"- Built on `{meta['base']['checkpoint']}`'s checkpoint (model.safetensors sha256 "
                         f"`{meta['base']['sha256'][:16]}…`): its LLM, tokenizer and image processor unchanged.")
        lines.append(f"- Retrain: `lvlm-probe organisms train {spec.checkpoint} --out DIR --seed {meta.get('seed')}`.")
    return "\n".join(lines) + "\n"


def write_card(name: str, ckpt: Path) -> Path:
    """Write ``MODEL_CARD.md`` (the checkpoint's own organism) or ``MODEL_CARD_<name>.md`` (run settings)."""
    spec = get_spec(name)
    fname = "MODEL_CARD.md" if spec.checkpoint == name else f"MODEL_CARD_{name}.md"
    path = Path(ckpt) / fname
    atomic_write_text(path, render_card(name, ckpt))
    return path
