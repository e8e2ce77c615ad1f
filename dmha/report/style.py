"""What every figure of the report shares: the Agg backend, a colour-blind-safe
palette, and how a figure and the data behind it are written.

Every figure function returns a :class:`Section`: the files it wrote (relative to the
report folder), a finding computed from its data, or why it is empty. An empty
section writes no picture: the report says why instead of drawing placeholder data.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are written on servers

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "OKABE_ITO",
    "RED",
    "GREY",
    "Section",
    "colour",
    "empty",
    "new_figure",
    "plural",
    "save_figure",
    "write_csv",
    "write_json",
]

# Okabe & Ito's palette: distinguishable under the common colour-vision deficiencies.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)
RED = "#D55E00"
"""Conflicts, rejections, firings: vermillion (the palette's red)."""
GREY = "#999999"
"""Noise and background."""
DPI = 110


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 update``, ``2 updates`` (``many`` for irregular plurals)."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def colour(i: int) -> str:
    """The ``i``-th palette colour (cycling; red and yellow kept for their meanings last)."""
    order = (0, 1, 2, 3, 4, 7, 6)
    return OKABE_ITO[order[i % len(order)]]


@dataclass
class Section:
    """One part of the report.

    Attributes:
        key: stable identifier (``attention``, ``latent``...).
        title: the heading.
        images: PNG files, relative to the report folder.
        data: CSV/JSON files behind the images, relative to the report folder.
        finding: a short statement computed from the data (Markdown).
        empty_reason: why the section has no figure (None when it has one).
        stats: headline numbers (also in the JSON data); shown in the summary.
    """

    key: str
    title: str
    images: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    finding: str = ""
    empty_reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def empty(key: str, title: str, reason: str) -> Section:
    """A section without a figure, saying why."""
    return Section(key, title, empty_reason=reason)


def new_figure(width: float = 7.5, height: float = 4.5, ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    """A figure sized in inches, with one axes (or an array of ``nrows x ncols``)."""
    fig, ax = plt.subplots(nrows, ncols, figsize=(width, height), dpi=DPI, squeeze=True)
    return fig, ax


def save_figure(fig: Figure, out_dir: Path, name: str) -> str:
    """Write a figure as PNG and close it.

    The PNG carries no creation date, so the same data and seed give the same bytes.

    Args:
        fig: the figure.
        out_dir: the report folder.
        name: the file name (``*.png``).

    Returns:
        ``name`` (the path relative to the report folder).
    """
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return name


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return value


def write_csv(out_dir: Path, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Write rows under a header as CSV (floats to 10 significant digits: timestamps keep their seconds).

    Returns:
        ``name``.
    """
    with (out_dir / name).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(v) for v in row])
    return name


def _plain(value: Any) -> Any:
    # NaN/inf are not JSON: written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


def write_json(out_dir: Path, name: str, data: Any) -> str:
    """Write JSON (sorted keys, NaN as null).

    Returns:
        ``name``.
    """
    (out_dir / name).write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return name
