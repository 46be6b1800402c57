"""Document embeddings for semantic deduplication and diversity (pure numpy/scipy/scikit-learn).

The default backend needs no downloaded weights: word uni- and bigrams are hashed
(scikit-learn's HashingVectorizer, MurmurHash3), weighted by sublinear TF-IDF, and sparse-randomly
projected to a fixed dimension, then L2-normalised to float32. The IDF weights are fitted once on a
sample and travel as bytes (``to_bytes``/``from_bytes``), so every batch on every executor embeds
with the same weights. The projection is derived from the seed by a fixed integer hash, never
stored, and does not depend on numpy's or scikit-learn's random generators across versions.

The optional ``sentence-transformers`` backend loads a model folder that is already on local disk;
it never downloads. Neither backend decides anything: they return vectors.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

HASHED_TFIDF_FORMAT = "cleanwell-hashed-tfidf-v1"


class EmbeddingBackendError(RuntimeError):
    """An embedding backend cannot be used as configured (missing package, model folder, fit)."""


class TextEmbedder(Protocol):
    """What jobs need from a backend: a fixed dimension and L2-normalised float32 rows."""

    @property
    def dim(self) -> int: ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


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
        # alternate_sign off: counts stay non-negative so sublinear TF (1 + log tf) is defined.
        self._vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=self.ngram_range, alternate_sign=False, norm=None,
            dtype=np.float32)
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
            counts = self._vectorizer.transform(batch).tocsc()
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
            tfidf = self._vectorizer.transform(batch).tocsr()
            np.log(tfidf.data, out=tfidf.data)
            tfidf.data += 1.0
            tfidf.data *= self.idf[tfidf.indices]
            projected = (tfidf @ projection).toarray()
            norms = np.linalg.norm(projected, axis=1, keepdims=True)
            np.divide(projected, norms, out=projected, where=norms > 0)
            out[start:start + len(batch)] = projected
        return out

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
