"""Cards for a whole registry: find each entry's parent and results, write ``model_cards/``, detect stale cards."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from medhub._io import atomic_write_text
from medhub.cards.card import CardContext, render_card
from medhub.registry import PACKAGE_DIR, Registry, builtin_registry_path, load_registry, merge
from medhub.schema import Checkpoint, LineageStage

log = logging.getLogger(__name__)


def cards_dir() -> Path:
    """Where the generated cards live: ``model_cards/`` in a source checkout, ``medhub/_data`` in a wheel."""
    shipped = PACKAGE_DIR / "_data" / "model_cards"
    return (
        shipped
        if shipped.is_dir() and not (PACKAGE_DIR.parent / "registry.yaml").exists()
        else (PACKAGE_DIR.parent / "model_cards")
    )


def builtin_registry() -> Registry:
    """The shipped registry alone: cards are built from it, never from a user's overlays."""
    path = builtin_registry_path()
    return _merged(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _merged(path: str, mtime_ns: int) -> Registry:
    return merge([Path(path)])


def find_parent(entry: Checkpoint, registry: Registry) -> tuple[Checkpoint | None, bool]:
    """The registry checkpoint whose lineage is this one's minus the last stage (same architecture).

    Returns ``(parent, exact)``: ``exact`` when the earlier stages are recorded identically (dataset,
    objective, epochs and who ran them), i.e. the registry says these are the same weights.
    """
    if len(entry.lineage) < 2:
        return None, False
    prefix = entry.lineage[:-1]
    candidates = [
        other
        for other in sorted(registry.checkpoints.values(), key=lambda c: c.id)
        if other.id != entry.id
        and other.arch == entry.arch
        and [(s.dataset, s.objective) for s in other.lineage] == [(s.dataset, s.objective) for s in prefix]
    ]
    for other in candidates:
        if all(_same_run(a, b) for a, b in zip(other.lineage, prefix, strict=True)):
            return other, True
    return (candidates[0], False) if candidates else (None, False)


def _same_run(a: LineageStage, b: LineageStage) -> bool:
    return (a.dataset, a.objective, a.epochs, a.source) == (b.dataset, b.objective, b.epochs, b.source)


def card_context(entry: Checkpoint, registry: Registry) -> CardContext:
    """Results, tasks and parent of ``entry`` as recorded in ``registry``."""
    results = [r for r in registry.results if r.model == entry.id]
    tasks = {r.task: registry.tasks[r.task] for r in results if r.task in registry.tasks}
    parent, exact = find_parent(entry, registry)
    return CardContext(results=results, tasks=tasks, parent=parent, parent_exact=exact)


def card_text(model_id: str, registry: Registry | None = None) -> str:
    """The current card of a checkpoint id or alias (user overlays included), rendered fresh.

    >>> card_text("resnet50_imagenet1k").splitlines()[0]
    '---'
    """
    registry = registry or load_registry()
    entry = registry.get_model(model_id)
    return render_card(entry, card_context(entry, registry))


@dataclass(frozen=True)
class CardStatus:
    """Which card files differ from what the registry says they should be."""

    stale: tuple[str, ...]  # ids whose card is missing or out of date
    orphaned: tuple[str, ...]  # card files for ids the registry no longer has

    @property
    def current(self) -> bool:
        """True when every card matches the registry."""
        return not self.stale and not self.orphaned


def expected_cards(registry: Registry | None = None) -> dict[str, str]:
    """``{id: card text}`` for every checkpoint of the (built-in) registry."""
    registry = registry or builtin_registry()
    return {
        cid: render_card(entry, card_context(entry, registry))
        for cid, entry in sorted(registry.checkpoints.items())
    }


def check_cards(folder: Path | None = None, registry: Registry | None = None) -> CardStatus:
    """Compare ``folder``'s cards with the registry without writing anything."""
    folder = folder or cards_dir()
    expected = expected_cards(registry)
    stale = [cid for cid, text in expected.items() if _read(folder / f"{cid}.md") != text]
    orphaned = (
        sorted(p.stem for p in folder.glob("*.md") if p.stem not in expected) if folder.is_dir() else []
    )
    return CardStatus(tuple(stale), tuple(orphaned))


def build_cards(folder: Path | None = None, registry: Registry | None = None) -> CardStatus:
    """Rewrite stale cards and delete orphaned ones; returns what was changed."""
    folder = folder or cards_dir()
    expected = expected_cards(registry)
    status = check_cards(folder, registry)
    for cid in status.stale:
        atomic_write_text(folder / f"{cid}.md", expected[cid])
        log.info("wrote %s", folder / f"{cid}.md")
    for cid in status.orphaned:
        (folder / f"{cid}.md").unlink()
        log.info("removed %s (no such checkpoint)", folder / f"{cid}.md")
    return status


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
