"""MkDocs hook: publish every shipped organism model card as a page of the "Organism zoo" section.

The cards live beside the checkpoints (``lvlm_probe/organisms/checkpoints/<ckpt>/MODEL_CARD*.md``) and
are rewritten by ``lvlm-probe organisms check``; this hook reads them at build time, so the site can
never show a stale copy. ``MODEL_CARD.md`` is the card of the organism named like its directory,
``MODEL_CARD_<name>.md`` the card of a run-setting organism that reuses that checkpoint (``sampling``).

It adds one generated page ``zoo/<name>.md`` per card, appends them to the nav under the section
titled :data:`SECTION`, and replaces the marker :data:`MARKER` in ``organisms.md`` by a list of links.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SECTION = "Organism zoo"
MARKER = "<!-- model-cards -->"
CHECKPOINTS = Path("lvlm_probe") / "organisms" / "checkpoints"


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def find_cards(root: Path) -> list[tuple[str, Path]]:
    """``(organism name, card path)`` of every shipped card, ``clean`` first, then by name."""
    cards: list[tuple[str, Path]] = []
    for path in sorted((root / CHECKPOINTS).glob("*/MODEL_CARD*.md")):
        m = re.fullmatch(r"MODEL_CARD(?:_(\w+))?\.md", path.name)
        if m:
            cards.append((m.group(1) or path.parent.name, path))
    return sorted(cards, key=lambda c: (c[0] != "clean", c[0]))


def _card_page(name: str, path: Path, root: Path) -> str:
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(root).as_posix()
    return (f"{text.rstrip()}\n\n---\n\n*Generated from `{rel}` at build time. The card is rewritten by "
            f"`lvlm-probe organisms check {name}`; print it with `lvlm-probe organisms card {name}`.*\n")


def on_config(config: Any) -> Any:
    """Append one nav entry per model card to the zoo section."""
    cards = find_cards(_root(config))
    nav = config.nav or []
    for entry in nav:
        if isinstance(entry, dict) and SECTION in entry and isinstance(entry[SECTION], list):
            entry[SECTION].append({"Model cards": [{name: f"zoo/{name}.md"} for name, _ in cards]})
            break
    else:
        raise ValueError(f"mkdocs.yml: the nav has no section {SECTION!r} (a list) for the model cards")
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated card pages."""
    root = _root(config)
    for name, path in find_cards(root):
        files.append(File.generated(config, f"zoo/{name}.md", content=_card_page(name, path, root)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace the marker in the zoo page by links to the cards."""
    if MARKER not in markdown:
        return markdown
    links = "\n".join(f"- [`{name}`](zoo/{name}.md)" for name, _ in find_cards(_root(config)))
    return markdown.replace(MARKER, links or "*(no checkpoint is shipped in this installation)*")


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds when a card changes."""
    server.watch(str(_root(config) / CHECKPOINTS))
    return server
