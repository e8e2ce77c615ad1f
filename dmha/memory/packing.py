"""Lists of strings as two flat arrays (what persisted hot indexes store instead of pickles)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pack_strings", "unpack_strings"]


def pack_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every string, back to back, and where each ends.

    Args:
        values: the strings.

    Returns:
        ``(blob, ends)``: a ``uint8`` array and an ``int64`` array of end offsets.
    """
    encoded = [v.encode("utf-8") for v in values]
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    ends = np.cumsum(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded)))
    return blob, ends.astype(np.int64)


def unpack_strings(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    """The inverse of :func:`pack_strings`.

    Raises:
        ValueError: the offsets do not fit the blob, or the bytes are not UTF-8.
    """
    if len(ends) and (int(ends[-1]) != len(blob) or bool(np.any(np.diff(ends) < 0)) or int(ends[0]) < 0):
        raise ValueError("string offsets do not match their bytes")
    raw = blob.tobytes()
    bounds = ends.tolist()
    starts = [0, *bounds[:-1]] if bounds else []
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, bounds, strict=True)]
