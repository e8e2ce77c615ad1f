"""Immutable model versions on disk, and the pointer to the live one.

Layout under ``<data_dir>/registry``::

    live.json                   {"version": "v3", "previous": "v2", "updated_at": ...}
    versions/v3/version.json    the record (never rewritten)
    versions/v3/delta.safetensors  the cumulative change from base of every edited matrix
    versions/v3/PRUNED          present once the retention policy deleted the delta
    frozen/v3.pt                TorchScript-frozen module of the live version (a cache)
    staging/<random>/           work folders of updates in flight

A version is created by writing everything into a staging folder, writing its record
there last (temp file + fsync + ``os.replace``) and then renaming the folder into
``versions/`` in one step: a crash or a full disk at any point leaves either no
version or a complete one, and never touches the live pointer. The version ``base``
is the converted default model folder; every other version stores its cumulative
delta from base (a few edited matrices, not a copy of the model), so it is rebuilt
as ``base + delta`` on its own and any other version may be deleted. The retention
policy (:meth:`Registry.prune`) deletes the deltas of versions nobody needs; their
records stay, so lineage and feedback history remain readable. Frozen modules are a
cache: only the live version's is kept, and it is rebuilt from the delta when missing.
Artifacts carry SHA-256 checksums; a version whose delta is missing or corrupt
resolves to its nearest intact ancestor.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from dmha.errors import ArtifactError, FailedPrecondition, NotFound
from dmha.learning.feedback import FeedbackItem
from dmha.learning.plan import UpdatePlan

__all__ = ["BASE_VERSION", "Artifact", "Registry", "Version", "Writer", "default_writer"]

log = logging.getLogger(__name__)

BASE_VERSION = "base"
_PRUNED = "PRUNED"
_ID = re.compile(r"^v(\d+)$")
_STALE_STAGING_SECONDS = 3600.0

Writer = Callable[[IO[bytes], bytes], None]
"""Writes bytes to an open file; injectable so tests can simulate a full disk."""


def default_writer(fh: IO[bytes], data: bytes) -> None:
    """Write, flush and fsync ``data``."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A file of a version: path relative to the version folder, checksum and size."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Version:
    """One immutable model version.

    Attributes:
        version_id: ``base`` or ``v<n>``.
        parent: the version it was trained from (None for base).
        created_at: Unix time.
        feedback: the feedback items learned by this update.
        plan: how it was trained (None for base).
        metrics: the gate's metrics and training figures.
        artifacts: name -> :class:`Artifact` (``delta``).
        status: ``base``, ``accepted`` (only gate-passing updates are registered) or
            ``pruned`` (the retention policy deleted its delta).
        path: the version folder (the model folder for base).
    """

    version_id: str
    parent: str | None
    created_at: float
    feedback: tuple[FeedbackItem, ...] = ()
    plan: UpdatePlan | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    status: str = "accepted"
    path: Path = Path()

    @property
    def feedback_ids(self) -> tuple[str, ...]:
        """Ids of the learned feedback."""
        return tuple(f.feedback_id for f in self.feedback)

    @property
    def delta_path(self) -> Path | None:
        """The stored delta (None for base)."""
        art = self.artifacts.get("delta")
        return self.path / art.path if art else None

    @property
    def stored_bytes(self) -> int:
        """Bytes of the version's artifacts on disk (0 once pruned)."""
        return 0 if self.status == "pruned" else sum(a.bytes for a in self.artifacts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``path`` is implied by where the record lives)."""
        return {
            "version_id": self.version_id,
            "parent": self.parent,
            "created_at": self.created_at,
            "feedback": [f.to_dict() for f in self.feedback],
            "plan": self.plan.to_dict() if self.plan else None,
            "metrics": self.metrics,
            "artifacts": {k: vars(a) for k, a in self.artifacts.items()},
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Version:
        """Parse a record; raises ``KeyError``/``TypeError``/``ValueError`` when malformed."""
        return cls(
            version_id=str(data["version_id"]),
            parent=data["parent"],
            created_at=float(data["created_at"]),
            feedback=tuple(FeedbackItem.from_dict(f) for f in data["feedback"]),
            plan=UpdatePlan.from_dict(data["plan"]) if data["plan"] else None,
            metrics={str(k): float(v) for k, v in data["metrics"].items()},
            artifacts={k: Artifact(**a) for k, a in data["artifacts"].items()},
            status=str(data["status"]),
            path=path,
        )


class Registry:
    """The versions of one deployment.

    Args:
        root: the registry folder (``<data_dir>/registry``); created if absent.
        base_path: the converted default model folder (version ``base``).
        writer: how record bytes reach the disk (tests inject a failing one).
        shared: other processes use this registry too (replicas and workers): only
            staging folders untouched for an hour are leftovers, not all of them.
    """

    def __init__(self, root: Path, base_path: Path, writer: Writer = default_writer, shared: bool = False) -> None:
        self.root = Path(root)
        self.base_path = Path(base_path)
        self._write = writer
        self._lock = threading.Lock()
        self._verified: dict[str, bool] = {}
        self._listeners: list[Callable[[str], None]] = []
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        staging = self.root / "staging"
        # Leftovers of updates killed mid-way: never registered, safe to drop. A shared
        # registry's fresh folders may be another worker's update in flight.
        if staging.exists() and not shared:
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            cutoff = time.time() - _STALE_STAGING_SECONDS
            for leftover in staging.iterdir():
                with contextlib.suppress(OSError):
                    if leftover.stat().st_mtime < cutoff:
                        shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- writing

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("wb") as fh:
                self._write(fh, data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def new_staging(self) -> Path:
        """A fresh folder for an update's artifacts (``delta.safetensors``).

        Returns:
            The folder; pass it to :meth:`commit`, or :meth:`discard` it.
        """
        path = self.root / "staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def discard(self, staging: Path) -> None:
        """Remove a staging folder (a rejected or failed update)."""
        shutil.rmtree(staging, ignore_errors=True)

    def _next_id(self) -> str:
        numbers = [int(m[1]) for p in (self.root / "versions").iterdir() if (m := _ID.match(p.name))]
        return f"v{max(numbers, default=0) + 1}"

    def commit(
        self,
        staging: Path,
        parent: str,
        feedback: list[FeedbackItem] | tuple[FeedbackItem, ...],
        plan: UpdatePlan,
        metrics: dict[str, float],
    ) -> Version:
        """Turn a staging folder into a new immutable version (not yet live).

        Every file in ``staging`` becomes a checksummed artifact. On any error the
        staging folder is removed and no version exists.

        Args:
            staging: from :meth:`new_staging`, holding ``delta.safetensors``.
            parent: the version the update started from.
            feedback: the learned items.
            plan: how it was trained.
            metrics: gate and training figures.

        Returns:
            The new version.

        Raises:
            NotFound: ``parent`` does not exist.
            OSError: the disk is full or unwritable (nothing was created).
        """
        self.get(parent)
        try:
            artifacts: dict[str, Artifact] = {}
            for f in sorted(p for p in staging.rglob("*") if p.is_file()):
                rel = f.relative_to(staging).as_posix()
                name = "delta" if rel == "delta.safetensors" else rel
                artifacts[name] = Artifact(rel, _sha256(f), f.stat().st_size)
            with self._lock:
                for _ in range(100):
                    vid = self._next_id()
                    version = Version(
                        vid,
                        parent,
                        time.time(),
                        tuple(feedback),
                        plan,
                        dict(metrics),
                        artifacts,
                        "accepted",
                    )
                    data = json.dumps(version.to_dict(), indent=2, sort_keys=True).encode()
                    self._atomic_write(staging / "version.json", data)
                    target = self.root / "versions" / vid
                    try:
                        os.rename(staging, target)
                    except OSError as exc:
                        # Another registry took this id first; try the next one.
                        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or target.exists():
                            continue
                        raise
                    _fsync_dir(target.parent)
                    log.info("registered version %s (parent %s)", vid, parent)
                    return Version.from_dict(version.to_dict(), target)
            raise OSError("could not allocate a version id")
        except BaseException:
            self.discard(staging)
            raise

    # ----------------------------------------------------------------- reading

    def _base(self) -> Version:
        return Version(BASE_VERSION, None, 0.0, status="base", path=self.base_path)

    def get(self, version_id: str) -> Version:
        """A version's record.

        Raises:
            NotFound: no such version, or its record is unreadable.
        """
        if version_id == BASE_VERSION:
            return self._base()
        if not _ID.match(version_id):
            raise NotFound(f"no model version {version_id!r}")
        folder = self.root / "versions" / version_id
        try:
            data = json.loads((folder / "version.json").read_text(encoding="utf-8"))
            version = Version.from_dict(data, folder)
            if (folder / _PRUNED).exists():
                version = replace(version, status="pruned")
            return version
        except FileNotFoundError as exc:
            raise NotFound(f"no model version {version_id!r}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("version %s: record %s is corrupt: %s", version_id, folder / "version.json", exc)
            raise NotFound(f"model version {version_id!r} is unreadable") from exc

    def versions(self) -> list[Version]:
        """Every readable version, base first, then by number (also :meth:`list`)."""
        out = [self._base()]
        names = [p.name for p in (self.root / "versions").iterdir() if _ID.match(p.name)]
        for name in sorted(names, key=lambda n: int(n[1:])):
            try:
                out.append(self.get(name))
            except NotFound:
                continue
        return out

    def lineage(self, version_id: str) -> list[Version]:
        """The version and its ancestors, base last.

        Raises:
            NotFound: the version or an ancestor is missing.
        """
        chain = [self.get(version_id)]
        while chain[-1].parent is not None:
            chain.append(self.get(chain[-1].parent))
            if len(chain) > 100_000:
                raise ArtifactError(f"version {version_id}: ancestry loops")
        return chain

    def feedback_history(self, version_id: str) -> list[FeedbackItem]:
        """Every item learned along the ancestry of ``version_id``, oldest first."""
        items: list[FeedbackItem] = []
        for v in reversed(self.lineage(version_id)):
            items.extend(v.feedback)
        return items

    # -------------------------------------------------------------- integrity

    def _intact(self, version: Version) -> str | None:
        """None when every artifact is present and matches; else what is wrong."""
        if version.version_id == BASE_VERSION:
            return None if version.path.is_dir() else f"base model folder {version.path} is missing"
        if version.status == "pruned":
            return "its delta was deleted by the retention policy"
        if "delta" not in version.artifacts:
            return "it has no delta (a version of an older format)"
        cached = self._verified.get(version.version_id)
        if cached:
            return None
        for name, art in version.artifacts.items():
            path = version.path / art.path
            if not path.is_file():
                return f"artifact {name} ({path}) is missing"
            if path.stat().st_size != art.bytes or _sha256(path) != art.sha256:
                return f"artifact {name} ({path}) is corrupt (checksum mismatch)"
        self._verified[version.version_id] = True
        return None

    def resolve(self, version_id: str) -> Version:
        """The version itself if its delta is intact, else the nearest intact ancestor.

        Each fallback is logged with the reason.

        Raises:
            NotFound: ``version_id`` does not exist.
            ArtifactError: not even the base model folder is usable.
        """
        try:
            chain = self.lineage(version_id)
        except NotFound:
            if version_id == BASE_VERSION:
                raise
            log.error("version %s: its record or an ancestor's is unreadable; using base", version_id)
            chain = [self._base()]
        # Versions are self-contained (base + their own delta): the first intact one wins.
        for v in chain:
            problem = self._intact(v)
            if problem is None:
                if v.version_id != chain[0].version_id:
                    log.error("version %s unusable; serving %s", version_id, v.version_id)
                return v
            if v.version_id == BASE_VERSION:
                raise ArtifactError(problem)
            log.error("version %s: %s; falling back to its parent %s", v.version_id, problem, v.parent)
        raise ArtifactError(f"version {version_id}: no intact version in its ancestry")

    # -------------------------------------------------------------- retention

    def prune(self, keep_ancestors: int, keep_last: int) -> list[str]:
        """Delete the deltas of versions the retention policy does not keep.

        Kept: the live version, its ``keep_ancestors`` nearest ancestors and the
        ``keep_last`` most recent versions. A pruned version's record stays (its
        feedback remains part of its descendants' history) but it can no longer be
        served. Frozen modules of every version but the live one are deleted too.

        Args:
            keep_ancestors: ancestors of the live version kept.
            keep_last: most recent versions kept.

        Returns:
            The ids pruned by this call.
        """
        live = self.live_id
        keep = {live}
        with contextlib.suppress(NotFound):  # an unreadable ancestry keeps nothing extra
            keep.update(v.version_id for v in self.lineage(live)[1 : 1 + keep_ancestors])
        versions = [v for v in self.versions() if v.version_id != BASE_VERSION]
        keep.update(v.version_id for v in versions[len(versions) - keep_last :] if keep_last)
        pruned = []
        with self._lock:
            for v in versions:
                if v.version_id in keep or v.status == "pruned":
                    continue
                marker = v.path / _PRUNED
                self._atomic_write(marker, b"pruned by the retention policy\n")
                for art in v.artifacts.values():
                    (v.path / art.path).unlink(missing_ok=True)
                self._verified.pop(v.version_id, None)
                pruned.append(v.version_id)
        self.drop_frozen(keep={live})
        if pruned:
            log.info("retention: pruned %s (kept %s)", pruned, sorted(keep))
        return pruned

    def frozen_cache(self, version_id: str) -> Path:
        """Where the frozen module of ``version_id`` is cached (may not exist)."""
        return self.root / "frozen" / f"{version_id}.pt"

    def drop_frozen(self, keep: set[str]) -> None:
        """Delete cached frozen modules of versions not in ``keep``.

        A kept version's module being written (``.<version>.pt``, renamed when
        checked) is kept too: a prune must not pull it from under its freeze.
        """
        folder = self.root / "frozen"
        if not folder.is_dir():
            return
        for f in folder.iterdir():
            if f.suffix == ".pt" and f.stem.removeprefix(".") not in keep:
                f.unlink(missing_ok=True)

    # ------------------------------------------------------------------- live

    def _pointer(self) -> dict[str, Any]:
        path = self.root / "live.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("version"), str):
                raise ValueError("no 'version' key")
            return data
        except FileNotFoundError:
            return {"version": BASE_VERSION, "previous": None}
        except (OSError, ValueError) as exc:
            log.error("live pointer %s is corrupt (%s); using base", path, exc)
            return {"version": BASE_VERSION, "previous": None}

    @property
    def live_id(self) -> str:
        """The id the live pointer names (``base`` when none is set)."""
        return str(self._pointer()["version"])

    def live(self) -> Version:
        """The live version, resolved to an intact one (see :meth:`resolve`)."""
        return self.resolve(self.live_id)

    def promote(self, version_id: str) -> Version:
        """Make a version live.

        Raises:
            NotFound: no such version.
            FailedPrecondition: it was pruned.
            ArtifactError: its delta is damaged.
            OSError: the pointer could not be written (the old one stays).
        """
        version = self.get(version_id)
        if version.status == "pruned":
            raise FailedPrecondition(f"version {version_id} was pruned by the retention policy and cannot be served")
        problem = self._intact(version)
        if problem is not None:
            raise ArtifactError(f"cannot promote {version_id}: {problem}")
        with self._lock:
            previous = self.live_id
            data = {"version": version_id, "previous": previous, "updated_at": time.time()}
            self._atomic_write(self.root / "live.json", json.dumps(data).encode())
        log.info("live version %s -> %s", previous, version_id)
        for listener in self._listeners:
            listener(version_id)
        return version

    def on_promote(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(version_id)`` after each :meth:`promote` moved the pointer.

        How the pointer in Redis (followed by every replica) tracks this one.
        """
        self._listeners.append(listener)

    def rollback(self, to: str | None = None) -> Version:
        """Make the live version's parent (or ``to``) live.

        Args:
            to: the version to return to; None = the live version's parent.

        Returns:
            The new live version.

        Raises:
            FailedPrecondition: live is base and no target was given.
            NotFound: ``to`` does not exist.
            ArtifactError: the target is damaged.
        """
        if to is None:
            current = self.get(self.live_id)
            if current.parent is None:
                raise FailedPrecondition("the live version is base; there is nothing to roll back")
            to = current.parent
        return self.promote(to)

    list = versions
