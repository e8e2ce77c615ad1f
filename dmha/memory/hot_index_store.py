"""Persisted hot indexes: one file per user, stamped with the store version it holds.

Rebuilding a 100k-memory user's index from Milvus Lite takes about a minute (the
scan with vectors, then tokenising and indexing every text); reading it back from
one file takes a few seconds. A file is used only when the version it was stamped
with equals the user's current store version (:mod:`dmha.memory.versions`), so a
copy that misses a write is never served; a file that cannot be read, has the wrong
format or fails its checksum is logged and ignored (the caller rebuilds).

Layout: ``MAGIC``, the header length (8 bytes, little endian), a JSON header (user,
store version digest, index facts, each array's dtype/shape/offset), the arrays back
to back (64-byte aligned), and a SHA-256 of everything between the magic and it.
No pickles: a file someone else could write is data, never code. Files are written
to a temporary name and renamed, so a reader never sees half a file and concurrent
writers (replicas sharing a directory) leave one whole file.

Where: ``memory.hot_index.dir``, by default ``<data_dir>/hot_index``. Each process may
have its own directory (a per-replica cache; nothing is shared) or replicas may share
one; the version check makes either correct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dmha.memory.user_index import UserIndex
from dmha.memory.versions import StoreVersion

__all__ = ["HotIndexStore"]

log = logging.getLogger(__name__)

MAGIC = b"DMHAHIX1"
_ALIGN = 64
_DIGEST = 32


def _file_name(user_id: str) -> str:
    # User ids are validated elsewhere, but a hash keeps any id a safe, short file name.
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:40] + ".hidx"


class HotIndexStore:
    """Saves and loads users' :class:`UserIndex` files in one directory.

    Args:
        directory: where the files live (created on first save).
        min_memories: users with fewer memories are not persisted (rebuilding them
            from Milvus is quick).
    """

    def __init__(self, directory: Path, min_memories: int = 0) -> None:
        self.directory = Path(directory)
        self.min_memories = min_memories

    def path(self, user_id: str) -> Path:
        """The file of a user."""
        return self.directory / _file_name(user_id)

    def save(self, index: UserIndex, version: StoreVersion) -> bool:
        """Write a user's index, stamped with the store version it holds.

        Args:
            index: the index (read under its lock).
            version: the store version every write of which it holds.

        Returns:
            True when written; False when the user is below ``min_memories`` or the
            disk refused (logged: persistence is an optimisation, never an error).
        """
        if len(index) < self.min_memories:
            return False
        meta, arrays = index.export()
        entries: list[dict[str, Any]] = []
        offset = 0
        for name, arr in arrays.items():
            offset = -(-offset // _ALIGN) * _ALIGN
            data = np.ascontiguousarray(arr)
            entries.append(
                {
                    "name": name,
                    "dtype": data.dtype.str,
                    "shape": list(data.shape),
                    "offset": offset,
                    "nbytes": data.nbytes,
                }
            )
            offset += data.nbytes
        header = json.dumps({"format": 1, "version": version.digest, "meta": meta, "arrays": entries}).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    digest = hashlib.sha256()
                    fh.write(MAGIC)
                    for chunk in (struct.pack("<Q", len(header)), header):
                        fh.write(chunk)
                        digest.update(chunk)
                    at = 0
                    for entry, arr in zip(entries, arrays.values(), strict=True):
                        body = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
                        for part in (bytes(entry["offset"] - at), body):
                            fh.write(part)
                            digest.update(part)
                        at = entry["offset"] + entry["nbytes"]
                    fh.write(digest.digest())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path(index.user_id))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("could not persist the hot index of %s in %s: %s", index.user_id, self.directory, exc)
            return False
        index.saved = version.digest
        return True

    def load(self, user_id: str, version: StoreVersion) -> UserIndex | None:
        """The user's persisted index, if it holds exactly ``version``.

        Args:
            user_id: the user.
            version: the store's current version of the user.

        Returns:
            The index (its ``version`` and ``saved`` set), or None when there is no
            file, it is stale (logged at debug), or it is damaged (logged as a warning).
        """
        path = self.path(user_id)
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if fh.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a hot index file")
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > size:
                    raise ValueError("header length out of range")
                header_bytes = fh.read(length)
                header = json.loads(header_bytes)
                if header.get("version") != version.digest:
                    log.debug("persisted hot index of %s is stale; rebuilding", user_id)
                    return None
                # A bytearray: the arrays built over it are writable, as a fresh index's are.
                body = bytearray(size - len(MAGIC) - 8 - length - _DIGEST)
                if fh.readinto(body) != len(body):
                    raise ValueError("truncated")
                stored = fh.read(_DIGEST)
            digest = hashlib.sha256(struct.pack("<Q", length))
            digest.update(header_bytes)
            digest.update(body)
            if digest.digest() != stored:
                raise ValueError("checksum mismatch")
            meta = header["meta"]
            if meta.get("user_id") != user_id:
                raise ValueError("file belongs to another user")
            arrays: dict[str, np.ndarray] = {}
            for e in header["arrays"]:
                dtype = np.dtype(e["dtype"])
                count = int(np.prod(e["shape"])) if e["shape"] else 1
                if count * dtype.itemsize != e["nbytes"] or e["offset"] + e["nbytes"] > len(body):
                    raise ValueError(f"array {e['name']} out of range")
                arr = np.frombuffer(body, dtype=dtype, count=count, offset=e["offset"])
                arrays[e["name"]] = arr.reshape(e["shape"])
            index = UserIndex.restore(meta, arrays)
        except FileNotFoundError:
            return None
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
            RuntimeError,
            struct.error,
        ) as exc:
            # RuntimeError: Faiss refusing a damaged quantizer.
            log.warning(
                "persisted hot index %s of %s is unreadable (%s); rebuilding from the store", path, user_id, exc
            )
            return None
        index.version = version
        index.saved = version.digest
        return index

    def discard(self, user_id: str) -> None:
        """Delete a user's file (their memories were deleted: no copy may survive)."""
        try:
            self.path(user_id).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete the persisted hot index of %s: %s", user_id, exc)
