"""Document embeddings for semantic deduplication and diversity (pure numpy/scipy/scikit-learn).

The default backend needs no downloaded weights: word uni- and bigrams are hashed (the features and
MurmurHash3 buckets of scikit-learn's HashingVectorizer, computed with numpy over a whole batch:
:func:`hashed_word_ngram_counts`), weighted by sublinear TF-IDF, and sparse-randomly projected to a
fixed dimension, then L2-normalised to float32. The IDF weights are fitted once on a
sample and travel as bytes (``to_bytes``/``from_bytes``), so every batch on every executor embeds
with the same weights. The projection is derived from the seed by a fixed integer hash, never
stored, and does not depend on numpy's or scikit-learn's random generators across versions.

The optional ``sentence-transformers`` backend loads a model folder that is already on local disk;
it never downloads. Neither backend decides anything: they return vectors.
"""
from __future__ import annotations

import functools
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from udfs.sparse_counts import count_matrix

HASHED_TFIDF_FORMAT = "cleanwell-hashed-tfidf-v1"


class EmbeddingBackendError(RuntimeError):
    """An embedding backend cannot be used as configured (missing package, model folder, fit)."""


class TextEmbedder(Protocol):
    """What jobs need from a backend: a fixed dimension and L2-normalised float32 rows."""

    @property
    def dim(self) -> int: ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


_MURMUR_C1, _MURMUR_C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)
_LONG_RANGE = 64  # bytes; longer byte ranges are hashed one by one (murmurhash3_32)


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def murmurhash3_32(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """MurmurHash3_x86_32 with seed 0 of each byte range ``data[starts[i]:starts[i] + lengths[i]]`` (uint8
    ``data``), as int32: ``sklearn.utils.murmurhash3_32(bytes(range), seed=0)`` for every range at once.

    The ranges are taken longest first, so the ranges that still have a 4-byte block ``j`` are a prefix and
    each block position is a few numpy operations over that prefix. Ranges longer than ``_LONG_RANGE``
    bytes (rare: a URL, a run of letters) are hashed one by one by scikit-learn, so one long range does not
    cost a numpy pass per block."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    long = np.flatnonzero(lengths > _LONG_RANGE)
    if len(long):
        from sklearn.utils import murmurhash3_32 as reference

        hashes = np.empty(len(lengths), dtype=np.int32)
        short = np.flatnonzero(lengths <= _LONG_RANGE)
        hashes[short] = murmurhash3_32(data, starts[short], lengths[short])
        hashes[long] = [reference(data[begin:begin + size].tobytes(), seed=0)
                        for begin, size in zip(starts[long].tolist(), lengths[long].tolist(), strict=True)]
        return hashes
    padded = np.concatenate([data, np.zeros(4, dtype=np.uint8)]).astype(np.uint32)  # a tail may read past the end
    # the little-endian 32-bit word that starts at each byte: one gather per block below
    words = (padded[:-3] | (padded[1:-2] << np.uint32(8)) | (padded[2:-1] << np.uint32(16))
             | (padded[3:] << np.uint32(24)))
    blocks = lengths // 4
    longest = int(blocks.max()) if len(blocks) else 0
    # longest first; a stable sort of small integers is a radix sort
    order = np.argsort((longest - blocks).astype(np.uint16 if longest < 2**16 else np.int64), kind="stable")
    first, length, blocks = starts[order], lengths[order], blocks[order]
    h = np.zeros(len(first), dtype=np.uint32)
    descending = -blocks
    with np.errstate(over="ignore"):
        for j in range(longest):
            active = int(np.searchsorted(descending, -j, side="left"))  # ranges with more than j blocks
            k = _rotl32(words[first[:active] + 4 * j] * _MURMUR_C1, 15) * _MURMUR_C2
            h[:active] = _rotl32(h[:active] ^ k, 13) * np.uint32(5) + np.uint32(0xE6546B64)
        tail = length & 3
        at = first + 4 * blocks
        k = words[at] & ((np.uint32(1) << (8 * tail).astype(np.uint32)) - np.uint32(1))  # the tail's 0-3 bytes
        h = np.where(tail > 0, h ^ (_rotl32(k * _MURMUR_C1, 15) * _MURMUR_C2), h)
        h ^= length.astype(np.uint32)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    hashes = np.empty(len(first), dtype=np.int32)
    hashes[order] = h.view(np.int32)
    return hashes


_CHUNK_CHARS = 1 << 21


@functools.cache
def _word_characters() -> np.ndarray:
    """Which code points ``\\w`` matches in a ``re`` str pattern (alphanumeric or ``_``), indexed by code point."""
    table = np.fromiter((chr(c).isalnum() for c in range(sys.maxunicode + 1)), dtype=bool, count=sys.maxunicode + 1)
    table[ord("_")] = True
    return table


def _utf8_lengths(code_points: np.ndarray) -> np.ndarray:
    return 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)


def hashed_word_ngram_counts(texts: Sequence[str], n_features: int = 2**18, ngram_range: tuple[int, int] = (1, 2),
                             dtype: type = np.float32) -> sp.csr_matrix:
    """Counts of hashed word n-grams, one row per text: equal to scikit-learn's
    ``HashingVectorizer(n_features=n_features, ngram_range=ngram_range, alternate_sign=False, norm=None,
    dtype=dtype).transform(texts)`` (tests/test_embeddings.py), ~2.5x faster.

    scikit-learn finds tokens with a regular expression, builds each n-gram as a Python string and hashes
    it in a Python-level loop: most of an embedding's time. Here the batch is lowercased and decoded to
    code points once; a token (scikit-learn's ``\\b\\w\\w+\\b``) is a maximal run of two or more word
    characters. The tokens are laid out as UTF-8 with one space after each, so an n-gram is the byte range
    from its first token's start to its last token's end, and every range is hashed at once
    (:func:`murmurhash3_32`)."""
    low, high = ngram_range
    if not 1 <= low <= high:
        raise ValueError(f"ngram_range must be (low, high) with 1 <= low <= high, got {ngram_range}")
    blocks, chunk, chars = [], [], 0
    for text in texts:  # chunks of about _CHUNK_CHARS characters bound the temporary arrays (~60 bytes each)
        if chunk and chars + len(text) > _CHUNK_CHARS:
            blocks.append(_word_ngram_counts(chunk, n_features, ngram_range, dtype))
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
    blocks.append(_word_ngram_counts(chunk, n_features, ngram_range, dtype))
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr", dtype=dtype)


def _word_ngram_counts(texts: list[str], n_features: int, ngram_range: tuple[int, int], dtype: type) -> sp.csr_matrix:
    low, high = ngram_range
    shape = (len(texts), n_features)
    lowered = [text.lower() for text in texts]
    # a space between texts: no run of word characters crosses from one text into the next
    points = np.frombuffer(" ".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    text_starts = np.cumsum([0] + [len(text) + 1 for text in lowered[:-1]])
    edges = np.diff(np.concatenate([[False], _word_characters()[points], [False]]).astype(np.int8))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    token = run_ends - run_starts >= 2
    starts, ends = run_starts[token], run_ends[token]
    if not len(starts):
        return sp.csr_matrix(shape, dtype=dtype)
    text_of_token = np.searchsorted(text_starts, starts, side="right") - 1
    # the tokens' code points, each token followed by a space, and where each token's bytes start in UTF-8
    sizes = ends - starts + 1
    token_first = np.cumsum(sizes) - sizes  # where each token starts in the laid-out code points
    position = np.arange(int(sizes.sum()), dtype=np.int64)
    token_at = np.repeat(np.arange(len(starts)), sizes)
    offset = position - np.repeat(token_first, sizes)
    laid_out = np.where(offset < np.repeat(sizes - 1, sizes), points[np.minimum(starts[token_at] + offset,
                                                                                     len(points) - 1)], 0x20)
    byte_at = np.concatenate([[0], np.cumsum(_utf8_lengths(laid_out))])
    byte_starts = byte_at[token_first]
    byte_ends = byte_at[token_first + sizes - 1]
    data = np.frombuffer(laid_out.astype(np.uint32, copy=False).tobytes().decode("utf-32-le", "surrogatepass")
                         .encode("utf-8", "surrogatepass"), dtype=np.uint8)
    rows, range_starts, lengths = [], [], []
    for n in range(low, high + 1):
        if len(starts) < n:
            break
        first = np.flatnonzero(text_of_token[:len(starts) - n + 1] == text_of_token[n - 1:])
        rows.append(text_of_token[first])
        range_starts.append(byte_starts[first])
        lengths.append(byte_ends[first + n - 1] - byte_starts[first])
    if not rows:  # fewer tokens than the shortest n-gram
        return sp.csr_matrix(shape, dtype=dtype)
    hashes = murmurhash3_32(data, np.concatenate(range_starts), np.concatenate(lengths))
    # abs(h) % n_features; for h = -2**31 scikit-learn's special case gives the same bucket
    buckets = np.abs(hashes.astype(np.int64)) % n_features
    return count_matrix(np.concatenate(rows), buckets, shape, dtype)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fixed 64-bit integer hash (splitmix64 finaliser): same output on every platform/version."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class EmbeddingModel:
    """Hashed TF-IDF word n-grams, sparse random projection, L2 normalisation.

    Cosine similarity of two embeddings approximates the cosine of their TF-IDF vectors (a sparse
    Johnson-Lindenstrauss projection, Kane & Nelson 2014): each hashed feature adds ±1 to
    ``nonzeros_per_feature`` output coordinates chosen by hashing (feature, seed). With dim 256 the
    error on a cosine is about ±0.06 (1/√dim), fine for near-duplicates (cosine > 0.9) and topic
    clustering, not for fine-grained ranking.
    """

    def __init__(
        self,
        dim: int = 256,
        n_features: int = 2**18,
        ngram_range: tuple[int, int] = (1, 2),
        nonzeros_per_feature: int = 8,
        seed: int = 0,
        batch_size: int = 1024,
    ) -> None:
        if dim < 1 or n_features < 1 or nonzeros_per_feature < 1 or batch_size < 1:
            raise ValueError("dim, n_features, nonzeros_per_feature and batch_size must be positive")
        self._dim = dim
        self.n_features = n_features
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.nonzeros_per_feature = nonzeros_per_feature
        self.seed = seed
        self.batch_size = batch_size
        self.idf: np.ndarray | None = None
        self.n_fit_documents = 0
        self._projection: sp.csr_matrix | None = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def is_fitted(self) -> bool:
        return self.idf is not None

    def fit(self, texts: Iterable[str]) -> EmbeddingModel:
        """Learn IDF weights from a sample of texts (smoothed, as scikit-learn's TfidfTransformer)."""
        document_frequency = np.zeros(self.n_features, dtype=np.int64)
        n_documents = 0
        for batch in _batches(texts, self.batch_size):
            counts = self._counts(batch).tocsc()
            document_frequency += np.diff(counts.indptr)
            n_documents += len(batch)
        if n_documents == 0:
            raise EmbeddingBackendError("cannot fit IDF weights on zero texts; pass a sample of the corpus")
        self.idf = (np.log((1.0 + n_documents) / (1.0 + document_frequency)) + 1.0).astype(np.float32)
        self.n_fit_documents = n_documents
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row of length ``dim`` per text, L2-normalised; the zero row for a text with no
        word of two or more characters (empty, punctuation only) and for a missing text (None, NaN)."""
        if self.idf is None:
            raise EmbeddingBackendError("EmbeddingModel is not fitted: call fit(sample) or load one "
                                        "with EmbeddingModel.from_bytes")
        texts = list(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        projection = self._projection_matrix()
        for start in range(0, len(texts), self.batch_size):
            batch = [text if isinstance(text, str) else "" for text in texts[start:start + self.batch_size]]
            tfidf = self._counts(batch)
            np.log(tfidf.data, out=tfidf.data)
            tfidf.data += 1.0
            tfidf.data *= self.idf[tfidf.indices]
            projected = (tfidf @ projection).toarray()
            norms = np.linalg.norm(projected, axis=1, keepdims=True)
            np.divide(projected, norms, out=projected, where=norms > 0)
            out[start:start + len(batch)] = projected
        return out

    def _counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        # unsigned counts (alternate_sign off in scikit-learn's terms), so sublinear TF (1 + log tf) is defined
        return hashed_word_ngram_counts(texts, self.n_features, self.ngram_range)

    def _projection_matrix(self) -> sp.csr_matrix:
        if self._projection is None:
            s = self.nonzeros_per_feature
            keys = np.arange(self.n_features * s, dtype=np.uint64) + np.uint64(self.seed) * np.uint64(
                self.n_features * s)
            hashes = _splitmix64(keys)
            columns = (hashes % np.uint64(self._dim)).astype(np.int64)
            signs = np.where((hashes >> np.uint64(63)) == 1, 1.0, -1.0).astype(np.float32)
            rows = np.repeat(np.arange(self.n_features, dtype=np.int64), s)
            self._projection = sp.csr_matrix((signs / np.sqrt(s), (rows, columns)),
                                             shape=(self.n_features, self._dim), dtype=np.float32)
        return self._projection

    def to_bytes(self) -> bytes:
        """The fitted model (settings and IDF weights) as bytes, to broadcast or store beside a run."""
        if self.idf is None:
            raise EmbeddingBackendError("cannot serialise an unfitted EmbeddingModel; call fit first")
        settings = {"format": HASHED_TFIDF_FORMAT, "dim": self._dim, "n_features": self.n_features,
                    "ngram_range": list(self.ngram_range), "nonzeros_per_feature": self.nonzeros_per_feature,
                    "seed": self.seed, "batch_size": self.batch_size, "n_fit_documents": self.n_fit_documents}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, settings=np.frombuffer(json.dumps(settings).encode(), dtype=np.uint8),
                            idf=self.idf)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingModel:
        """Inverse of :meth:`to_bytes`; raises EmbeddingBackendError for bytes of another format."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                settings = json.loads(archive["settings"].tobytes().decode())
                idf = archive["idf"]
        except (ValueError, KeyError, OSError) as exc:
            raise EmbeddingBackendError(f"bytes are not a serialised EmbeddingModel: {exc}") from None
        if settings.get("format") != HASHED_TFIDF_FORMAT:
            raise EmbeddingBackendError(f"unsupported embedding model format {settings.get('format')!r}; "
                                        f"this version reads {HASHED_TFIDF_FORMAT!r}")
        model = cls(dim=settings["dim"], n_features=settings["n_features"],
                    ngram_range=tuple(settings["ngram_range"]),
                    nonzeros_per_feature=settings["nonzeros_per_feature"], seed=settings["seed"],
                    batch_size=settings["batch_size"])
        if idf.shape != (model.n_features,):
            raise EmbeddingBackendError(f"IDF vector has shape {idf.shape}, expected ({model.n_features},)")
        model.idf = idf.astype(np.float32)
        model.n_fit_documents = settings["n_fit_documents"]
        return model


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, never from a model hub.

    Needs ``pip install 'cleanwell[embeddings]'`` and the model folder on every executor (e.g. a
    path on shared storage written once by ``SentenceTransformer(name).save(path)`` on a machine
    with network access).
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise EmbeddingBackendError(
                f"sentence-transformers model folder {path} does not exist; cleanwell never downloads "
                "models: save the model there first, or use the default hashed TF-IDF backend")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingBackendError(
                "the sentence-transformers backend needs the package: pip install 'cleanwell[embeddings]'"
            ) from None
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self._model.get_sentence_embedding_dimension())

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        vectors = self._model.encode([text if isinstance(text, str) else "" for text in texts],
                                     batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _batches(texts: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text if isinstance(text, str) else "")
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
