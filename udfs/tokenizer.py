"""Sentencepiece tokenizer trained in-process, stored as bytes (pure core, no Spark).

The detectors count and model *subword* tokens, so that a document in any script has a token
stream and the n-gram language model sees no out-of-vocabulary words (byte fallback). The model is
trained here from an iterable of texts and travels as serialized bytes (inside a detector bundle,
an MLflow artifact, or a broadcast variable); nothing is downloaded.

This module only turns text into token ids. It must not score or decide anything.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

# sentencepiece drops training "sentences" longer than this many bytes (its default is 4192), so
# long documents are fed line by line and long lines are cut here.
_MAX_TRAINING_LINE_CHARS = 4000


class TokenizerTrainingError(ValueError):
    """Training data cannot produce a tokenizer (for example: it holds no text)."""


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line:
                yield line[:_MAX_TRAINING_LINE_CHARS]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    model_type: str = "unigram",
    seed: int = 0,
) -> bytes:
    """Train a sentencepiece model on ``texts`` and return its serialized bytes.

    ``vocab_size`` is an upper bound: ``hard_vocab_limit=False`` lets a small corpus yield fewer
    pieces instead of failing. Training is single-threaded with unshuffled input and a fixed seed,
    so the same texts and seed give byte-identical models. Byte fallback maps any character unseen
    in training to byte pieces, so every text encodes without an unknown token.
    """
    lines = list(_training_lines(texts))
    if not lines:
        raise TokenizerTrainingError("cannot train a tokenizer: the training texts contain no non-blank line")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=0.9995,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


class Tokenizer:
    """A loaded sentencepiece model. Picklable: it pickles as its model bytes."""

    def __init__(self, model_bytes: bytes) -> None:
        self._model_bytes = bytes(model_bytes)
        self._processor = spm.SentencePieceProcessor(model_proto=self._model_bytes)

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> Tokenizer:
        return cls(model_bytes)

    def to_bytes(self) -> bytes:
        return self._model_bytes

    def __getstate__(self) -> bytes:
        return self._model_bytes

    def __setstate__(self, state: bytes) -> None:
        self.__init__(state)

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def control_ids(self) -> tuple[int, ...]:
        """Ids that are not text (``<unk>``, ``<s>``, ``</s>``): a sampler must never emit them."""
        return tuple(i for i in range(self.vocab_size)
                     if self._processor.IsControl(i) or self._processor.IsUnknown(i))

    def encode_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, one int32 array per text."""
        encoded = self._processor.encode(list(texts), out_type=int, num_threads=1)
        return [np.asarray(ids, dtype=np.int32) for ids in encoded]

    def encode_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Token pieces (strings) of each text."""
        return self._processor.encode(list(texts), out_type=str, num_threads=1)

    def decode_ids(self, id_sequences: Sequence[Sequence[int]]) -> list[str]:
        return [self._processor.decode([int(i) for i in ids]) for ids in id_sequences]

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Number of tokens in each text (int64 array)."""
        return np.fromiter((len(ids) for ids in self._processor.encode(list(texts), out_type=int, num_threads=1)),
                           dtype=np.int64, count=len(texts))


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model_bytes: bytes) -> Tokenizer:
    """The tokenizer of the serialized model ``model_bytes``, parsed once per process: a pandas UDF
    calls its function once per Arrow batch."""
    return Tokenizer(model_bytes)


def count_tokens(texts: Sequence[str], model_bytes: bytes) -> np.ndarray:
    """Vectorised token count under the serialized model ``model_bytes``."""
    return cached_tokenizer(model_bytes).count_tokens(texts)


def encode_ids(texts: Sequence[str], model_bytes: bytes) -> list[np.ndarray]:
    """Vectorised encoding under the serialized model ``model_bytes``."""
    return cached_tokenizer(model_bytes).encode_ids(texts)
