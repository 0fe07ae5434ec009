"""Synthetic record covers for the benchmarks: a mix of full, middle and sparse covers."""

from __future__ import annotations

from pathlib import Path

from conveyor.pipelines.records.heuristics import valid_barcode
from tests.support import make_cover

ALBUMS = [
    ("PINK FLOYD", "The Dark Side of the Moon"),
    ("KRAFTWERK", "Trans Europe Express"),
    ("BLACK SABBATH", "Paranoid"),
    ("NICK DRAKE", "Pink Moon"),
    ("BRIAN ENO", "Another Green World"),
    ("CAN", "Future Days"),
    ("TALK TALK", "Spirit of Eden"),
]
LABELS = ["HARVEST", "VERTIGO", "ISLAND", "VIRGIN", "PARLOPHONE", "ELEKTRA", "ATLANTIC"]
SPARSE = [("Trash80", "Icarus"), ("Boards", "Geogaddi"), ("Aphex", "Syro"),
          ("Burial", "Untrue"), ("Autechre", "Amber"), ("Plaid", "Trainer")]


def ean13(prefix12: str) -> str:
    """``prefix12`` plus the EAN-13 check digit."""
    for check in "0123456789":
        if valid_barcode(prefix12 + check):
            return prefix12 + check
    raise ValueError(prefix12)


def cover_lines(i: int) -> tuple[str, list[tuple[str, int]]]:
    """The kind (full, middle, sparse) and the text lines of cover number ``i``."""
    kind = ("full", "middle", "sparse")[i % 3]
    if kind == "sparse":
        artist, album = SPARSE[i % len(SPARSE)]
        return kind, [(f"{artist}{i // len(SPARSE) or ''}", 64), (album, 62)]
    artist, album = ALBUMS[i % len(ALBUMS)]
    label = LABELS[(i // 3) % len(LABELS)]
    catno = f"{label[:4]} {800 + i}"
    lines = [(artist, 64), (album, 44), (f"{label} {catno} {1968 + i % 20}", 30)]
    if kind == "full":
        lines.append((ean13(f"5099902{i:05d}"), 28))
    return kind, lines


def make_covers(folder: Path, count: int, *, size: int = 800) -> list[tuple[str, Path]]:
    """``count`` different JPEG covers in ``folder``: (kind, path) each."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, Path]] = []
    for i in range(count):
        kind, lines = cover_lines(i)
        bg = (20 + (i * 7) % 40, 30 + (i * 11) % 40, 90 + (i * 13) % 60)
        out.append((kind, make_cover(folder / f"cover-{i:04d}-{kind}.jpg", lines, size=size,
                                     bg=bg)))
    return out
