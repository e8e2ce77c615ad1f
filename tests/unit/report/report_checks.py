"""Checks shared by the report's figure tests."""

from __future__ import annotations

import csv
import struct
from pathlib import Path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG; fails when the file is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))
