"""An incremental BM25 index over one user's memories, and the tokeniser it uses.

rank-bm25 rescans every document per query term in Python (about 10 ms per term at
100k documents) and cannot add documents; this index keeps postings per term as
numpy arrays, so adding a memory is O(its tokens) and a query touches only the
postings of its terms.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from dmha.memory.packing import pack_strings, unpack_strings

__all__ = ["BM25Index", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Function words carry no topic; dropping them keeps postings short and scores sharp.
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "also",
        "get",
        "got",
        "really",
        "yeah",
        "yes",
        "oh",
        "hey",
        "hi",
        "wow",
        "like",
        "well",
        "much",
        "thanks",
        "thank",
        "lot",
        "im",
        "ive",
        "id",
        "youre",
        "thats",
        "dont",
        "didnt",
        "its",
        "lets",
        "gonna",
        "wanna",
    ]
)


def _stem(word: str) -> str:
    """A light suffix stripper: enough to match 'painting'/'paints'/'painted' with 'paint'."""
    stem = _strip_suffix(word)
    # A final silent 'e' goes too, so 'love', 'loves', 'loved' and 'loving' all meet at 'lov'.
    if len(stem) > 3 and stem.endswith("e") and not stem.endswith("ee"):
        stem = stem[:-1]
    return stem


def _strip_suffix(word: str) -> str:
    if len(word) <= 3 or word.isdigit():
        return word
    # Step 1: plurals ('paintings' -> 'painting', 'parties' -> 'party', 'boxes' -> 'box').
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    # Step 2: verb and adverb endings ('painting' -> 'paint', 'planned' -> 'plan').
    for suffix in ("edly", "ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if suffix in ("ing", "ed") and len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]  # 'running' -> 'run'
            return stem
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, stop-word-free, lightly stemmed word tokens.

    Args:
        text: any text.

    Returns:
        The tokens in order (duplicates kept: BM25 counts them).
    """
    out: list[str] = []
    for raw in _WORD.findall(text.lower()):
        word = raw.split("'", 1)[0]  # "caroline's" -> "caroline"
        if word and word not in _STOPWORDS:
            out.append(_stem(word))
    return out


class BM25Index:
    """Okapi BM25 over documents identified by dense integer keys (row numbers).

    Args:
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._postings: dict[str, tuple[list[int], list[int]]] = {}
        self._frozen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lengths = np.zeros(0, dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._live = 0
        self._total_length = 0.0

    def __len__(self) -> int:
        return self._live

    def _grow(self, key: int) -> None:
        if key < len(self._lengths):
            return
        size = max(key + 1, 2 * len(self._lengths), 64)
        lengths = np.zeros(size, dtype=np.float32)
        lengths[: len(self._lengths)] = self._lengths
        alive = np.zeros(size, dtype=bool)
        alive[: len(self._alive)] = self._alive
        self._lengths, self._alive = lengths, alive

    def add(self, key: int, tokens: Sequence[str]) -> None:
        """Index a document. A key must not be re-added without :meth:`remove` first.

        Args:
            key: the document's row number (small non-negative integer).
            tokens: its tokens from :func:`tokenize`.
        """
        self._grow(key)
        if self._alive[key]:
            raise ValueError(f"document {key} is already indexed")
        for term, tf in Counter(tokens).items():
            rows, tfs = self._postings.setdefault(term, ([], []))
            rows.append(key)
            tfs.append(tf)
            self._frozen.pop(term, None)
        self._lengths[key] = len(tokens)
        self._alive[key] = True
        self._live += 1
        self._total_length += len(tokens)

    def remove(self, key: int) -> None:
        """Forget a document (its postings are masked, and dropped on :meth:`compact`)."""
        if key < len(self._alive) and self._alive[key]:
            self._alive[key] = False
            self._live -= 1
            self._total_length -= float(self._lengths[key])

    def compact(self, remap: dict[int, int]) -> None:
        """Renumber documents after the caller compacted its rows.

        Args:
            remap: old key -> new key for every live document.
        """
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for term, (rows, tfs) in self._postings.items():
            kept = [(remap[r], t) for r, t in zip(rows, tfs, strict=True) if r in remap and self._alive[r]]
            if kept:
                postings[term] = ([r for r, _ in kept], [t for _, t in kept])
        size = max(remap.values(), default=-1) + 1
        lengths = np.zeros(max(size, 64), dtype=np.float32)
        alive = np.zeros(max(size, 64), dtype=bool)
        for old, new in remap.items():
            lengths[new] = self._lengths[old]
            alive[new] = self._alive[old]
        self._postings, self._frozen = postings, {}
        self._lengths, self._alive = lengths, alive

    def _live_postings(self, query_tokens: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(keys, term frequencies)`` of each distinct query term's live documents."""
        for term in dict.fromkeys(query_tokens):
            arrays = self._arrays(term)
            if arrays is None:
                continue
            keys, tf = arrays
            live = self._alive[keys]
            if live.any():
                yield keys[live], tf[live]

    def _arrays(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        frozen = self._frozen.get(term)
        if frozen is None:
            posting = self._postings.get(term)
            if posting is None:
                return None
            frozen = (np.asarray(posting[0], dtype=np.int64), np.asarray(posting[1], dtype=np.float32))
            self._frozen[term] = frozen
        return frozen

    def scores(self, query_tokens: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores of the documents that share a term with the query.

        Args:
            query_tokens: tokens from :func:`tokenize` (repeats are ignored).

        Returns:
            ``(keys, scores)`` of the matching live documents, unordered.
        """
        n = self._live
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        avgdl = max(self._total_length / n, 1e-6)
        all_keys: list[np.ndarray] = []
        all_scores: list[np.ndarray] = []
        for keys, tf in self._live_postings(query_tokens):
            # BM25+-style idf floor at a small positive value: a term in most documents
            # still counts a little instead of pushing scores negative.
            idf = max(float(np.log((n - len(keys) + 0.5) / (len(keys) + 0.5) + 1.0)), 1e-3)
            norm = self.k1 * (1.0 - self.b + self.b * self._lengths[keys] / avgdl)
            all_keys.append(keys)
            all_scores.append(idf * tf * (self.k1 + 1.0) / (tf + norm))
        if not all_keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        keys = np.concatenate(all_keys)
        scores = np.concatenate(all_scores)
        uniq, inverse = np.unique(keys, return_inverse=True)
        return uniq, np.bincount(inverse, weights=scores).astype(np.float32)

    def context_scores(
        self, query_tokens: Iterable[str], successor: np.ndarray, context_lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores of documents read together with the document before them.

        Document ``d`` is scored as if its text were its predecessor's followed by
        its own: a term in the predecessor counts for ``d`` as well. The combined
        documents are virtual -- built from the plain postings at query time -- so a
        removed document stops lending its words at once.

        Args:
            query_tokens: tokens from :func:`tokenize` (repeats are ignored).
            successor: ``successor[key]`` is the document ``key`` precedes, or -1
                (at least as long as the highest key).
            context_lengths: ``context_lengths[key]`` is the token count of ``key``'s
                combined text (its own plus its predecessor's).

        Returns:
            ``(keys, scores)`` of the matching live documents, unordered.
        """
        n = self._live
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        m = min(len(self._alive), len(context_lengths))
        avgdl = max(float(context_lengths[:m][self._alive[:m]].mean()), 1e-6)
        all_keys: list[np.ndarray] = []
        all_scores: list[np.ndarray] = []
        for keys, tf in self._live_postings(query_tokens):
            lent = successor[keys]
            has = lent >= 0
            keys, inverse = np.unique(np.concatenate([keys, lent[has]]), return_inverse=True)
            tf = np.bincount(inverse, weights=np.concatenate([tf, tf[has]])).astype(np.float32)
            idf = max(float(np.log((n - len(keys) + 0.5) / (len(keys) + 0.5) + 1.0)), 1e-3)
            norm = self.k1 * (1.0 - self.b + self.b * context_lengths[keys] / avgdl)
            all_keys.append(keys)
            all_scores.append(idf * tf * (self.k1 + 1.0) / (tf + norm))
        if not all_keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        keys = np.concatenate(all_keys)
        scores = np.concatenate(all_scores)
        uniq, inverse = np.unique(keys, return_inverse=True)
        return uniq, np.bincount(inverse, weights=scores).astype(np.float32)

    def export(self) -> dict[str, np.ndarray]:
        """The index as flat arrays (postings in CSR form), for :meth:`restore`."""
        # Removed documents' postings are left out: a deleted memory's words must
        # not survive in a persisted copy.
        terms: list[str] = []
        row_parts: list[np.ndarray] = []
        tf_parts: list[np.ndarray] = []
        for term in self._postings:
            keys, tf = self._arrays(term)  # type: ignore[misc]
            live = self._alive[keys]
            if live.any():
                terms.append(term)
                row_parts.append(keys[live])
                tf_parts.append(tf[live])
        sizes = np.fromiter((len(r) for r in row_parts), dtype=np.int64, count=len(row_parts))
        blob, ends = pack_strings(terms)
        rows = np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int64)
        tfs = (np.concatenate(tf_parts) if tf_parts else np.zeros(0, dtype=np.float32)).astype(np.int32)
        return {
            "terms": blob,
            "term_ends": ends,
            "posting_ends": np.cumsum(sizes),
            "rows": rows,
            "tfs": tfs,
            "lengths": self._lengths.copy(),
            "alive": self._alive.copy(),
            "params": np.array([self.k1, self.b, self._live, self._total_length], dtype=np.float64),
        }

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> BM25Index:
        """An index from :meth:`export`'s arrays.

        Raises:
            ValueError: the arrays are inconsistent (a damaged copy).
        """
        k1, b, live, total = arrays["params"].tolist()
        index = cls(k1, b)
        terms = unpack_strings(arrays["terms"], arrays["term_ends"])
        ends = arrays["posting_ends"]
        rows, tfs = arrays["rows"], arrays["tfs"]
        if len(ends) != len(terms) or (len(ends) and int(ends[-1]) != len(rows)) or len(rows) != len(tfs):
            raise ValueError("BM25 postings do not match their terms")
        index._lengths, index._alive = arrays["lengths"].copy(), arrays["alive"].astype(bool)
        if len(index._lengths) != len(index._alive) or (len(rows) and int(rows.max()) >= len(index._alive)):
            raise ValueError("BM25 postings point outside the index")
        index._live, index._total_length = int(live), float(total)
        tf32 = tfs.astype(np.float32)
        starts = [0, *ends.tolist()[:-1]] if len(ends) else []
        rows_list, tfs_list = rows.tolist(), tfs.tolist()
        for term, a, z in zip(terms, starts, ends.tolist(), strict=True):
            index._postings[term] = (rows_list[a:z], tfs_list[a:z])
            index._frozen[term] = (rows[a:z], tf32[a:z])  # query-ready until the term grows
        return index

    def length(self, key: int) -> int:
        """Token count of a live document (0 when absent)."""
        return int(self._lengths[key]) if key < len(self._alive) and self._alive[key] else 0

    def top(self, query_tokens: Iterable[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents.

        Args:
            query_tokens: tokens from :func:`tokenize`.
            k: how many.

        Returns:
            ``(key, score)`` pairs, best first.
        """
        keys, scores = self.scores(query_tokens)
        if len(keys) == 0 or k <= 0:
            return []
        if len(keys) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            keys, scores = keys[part], scores[part]
        order = np.lexsort((keys, -scores))  # ties by key: deterministic
        return [(int(keys[i]), float(scores[i])) for i in order]
