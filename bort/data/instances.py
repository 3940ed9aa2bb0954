"""Pretraining instances from tokenised documents: segment pairs and masked-LM predictions.

This follows Bort's `create_pretraining_data.py` (itself GluonNLP's port of Google's BERT script):

- Per document, one target length: `max_seq_length - 3`, or with probability `short_seq_prob` a random
  length in [2, that]. Sentences are gathered until the target is reached (or the document ends); a random
  number of them forms segment A, the rest segment B. With probability `random_next_prob` (0.5 in the
  original, which trained next-sentence prediction) B is instead taken from a random *other* document, and
  the unused sentences are put back. The pair is trimmed to fit (one token at a time from the longer
  segment, front or back at random) and laid out `<s> A </s> B </s>` (`[CLS] A [SEP] B [SEP]` for
  WordPiece). Bort has no token types and no NSP head, so no segment ids are kept; whether B was a random
  next is kept in the record flags.
- Masking: `round(len(tokens) · masked_lm_prob)` positions (at least 1, at most `max_predictions_per_seq`),
  chosen uniformly among non-special tokens (whole words when `whole_word_mask`); each is replaced by the
  mask token 80% of the time, kept 10%, replaced by a random token 10%.

Differences from the original, all deliberate:
- Random replacements are drawn from the non-special ids (the original could insert `<s>` or `<pad>`).
- Random-next partners come from the same chunk of the input (the original held the whole file in memory).
  A chunk with a single document cannot give one: B is then the actual next sentences, or absent
  (`<s> A </s>`) for a one-sentence piece, where the original crashed.
- The original wrapped every line in `<s> … </s>` through a double vocabulary look-up that mapped the ids
  to `<unk>`; sentences here are plain token ids.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Any, Container, Iterable, Sequence

__all__ = ["InstanceSettings", "Instance", "InstanceBuilder", "chunk_rng", "MAX_SEQ_LENGTH"]

# Far beyond any model's position table; positions are stored as uint32 (see `instance_format`).
MAX_SEQ_LENGTH = 1 << 20


@dataclass(frozen=True)
class InstanceSettings:
    """How instances are made; the defaults are the original script's."""

    max_seq_length: int = 512
    max_predictions_per_seq: int = 80
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    random_next_prob: float = 0.5
    whole_word_mask: bool = False
    dupe_factor: int = 1
    random_seed: int = 12345

    def __post_init__(self) -> None:
        # Types first, so that a string or None from a hand-written config is named rather than failing a
        # comparison (bool is refused where a number is meant: `True` would pass as 1).
        for name in ("max_seq_length", "max_predictions_per_seq", "dupe_factor", "random_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        for name in ("masked_lm_prob", "short_seq_prob", "random_next_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not isinstance(self.whole_word_mask, bool):
            raise ValueError(f"whole_word_mask must be true or false, got {self.whole_word_mask!r}")
        if self.max_seq_length > MAX_SEQ_LENGTH:
            raise ValueError(f"max_seq_length must be at most {MAX_SEQ_LENGTH}, got {self.max_seq_length}")
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length must be at least 5 (3 special tokens + 2), got {self.max_seq_length}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}")
        for name in ("masked_lm_prob", "short_seq_prob", "random_next_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.dupe_factor < 1:
            raise ValueError(f"dupe_factor must be >= 1, got {self.dupe_factor}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Instance:
    """One training sequence: masked input ids, the masked positions (sorted) and their original ids."""

    input_ids: list[int]
    masked_positions: list[int]
    masked_ids: list[int]
    is_random_next: bool


def chunk_rng(seed: int, chunk: int, dupe: int) -> random.Random:
    """The random stream of one (chunk, duplicate) pair. Derived from the seed and the chunk's place in the
    input, never from which worker runs it, so the output does not depend on the number of workers."""
    digest = hashlib.sha256(f"bort-pretraining/{seed}/{chunk}/{dupe}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


class InstanceBuilder:
    """Turns the documents of one chunk into `Instance`s (see the module docstring for the algorithm).

    `documents[d][s]` is sentence s of document d as a list of token ids; with whole-word masking,
    `word_starts[d][s]` marks which of those tokens begin a word.

    All random draws go through `rng.random()` (one C call each; `randint`/`sample` cost a Python-level
    loop per draw, which at a few instances per document was a third of the run time).
    """

    def __init__(self, settings: InstanceSettings, cls_id: int, sep_id: int, mask_id: int, vocab_size: int,
                 special_ids: Iterable[int]) -> None:
        self.settings = settings
        self.cls_id, self.sep_id, self.mask_id = cls_id, sep_id, mask_id
        self.never_mask = frozenset(special_ids) | {cls_id, sep_id, mask_id}
        self.replacements = [i for i in range(vocab_size) if i not in self.never_mask]
        self._special_docs: Container[int] | None = None
        if not self.replacements:
            raise ValueError("the vocabulary has no ordinary tokens to use as random replacements")

    # ------------------------------------------------------------------------------------------- documents
    def build(self, documents: Sequence[Sequence[list[int]]], rng: random.Random,
              word_starts: Sequence[Sequence[list[bool]]] | None = None,
              special_documents: Container[int] | None = None) -> list[Instance]:
        """Instances of every document of a chunk, in document order.

        `special_documents`: indices of documents whose text holds special ids (which must not be
        masked); None means "unknown", so every instance is checked token by token.
        """
        self._special_docs = special_documents
        out: list[Instance] = []
        for d in range(len(documents)):
            self._document(documents, d, rng, word_starts, out)
        return out

    def _document(self, docs: Sequence[Sequence[list[int]]], d: int, rng: random.Random,
                  starts: Sequence[Sequence[list[bool]]] | None, out: list[Instance]) -> None:
        s = self.settings
        rand = rng.random
        doc = docs[d]
        lens = [len(x) for x in doc]
        max_tokens = s.max_seq_length - 3
        target = max_tokens
        if rand() < s.short_seq_prob:
            target = 2 + int(rand() * (max_tokens - 1))  # uniform in [2, max_tokens]

        first = 0  # the current piece of the document is sentences first..i
        length = 0
        i = 0
        while i < len(doc):
            length += lens[i]
            if i == len(doc) - 1 or length >= target:
                n = i - first + 1
                a_end = first + (1 + int(rand() * (n - 1)) if n >= 2 else 1)  # A = sentences first..a_end-1
                a = (d, first, a_end)
                if n == 1:
                    random_next = len(docs) > 1
                else:
                    random_next = len(docs) > 1 and rand() < s.random_next_prob
                if random_next:
                    other = int(rand() * (len(docs) - 1))
                    if other >= d:
                        other += 1
                    other_doc = docs[other]
                    j = int(rand() * len(other_doc))
                    want = target - sum(lens[first:a_end])
                    got = 0
                    b_start = j
                    while j < len(other_doc):
                        got += len(other_doc[j])
                        j += 1
                        if got >= want:
                            break
                    b = (other, b_start, j)
                    i = a_end - 1  # the sentences not used for A are used again
                else:
                    b = (d, a_end, i + 1)
                out.append(self._instance(docs, starts, a, b, max_tokens, random_next, rng))
                first, length = i + 1, 0
            i += 1

    def _instance(self, docs: Sequence[Sequence[list[int]]], starts: Sequence[Sequence[list[bool]]] | None,
                  a_ref: tuple[int, int, int], b_ref: tuple[int, int, int], max_tokens: int,
                  random_next: bool, rng: random.Random) -> Instance:
        a = list(chain.from_iterable(docs[a_ref[0]][a_ref[1]:a_ref[2]]))
        b = list(chain.from_iterable(docs[b_ref[0]][b_ref[1]:b_ref[2]]))
        fa, ba, fb, bb = _trim_pair(len(a), len(b), max_tokens, rng)
        if fa or ba:
            a = a[fa:len(a) - ba]
        if fb or bb:
            b = b[fb:len(b) - bb]
        tokens = [self.cls_id, *a, self.sep_id]
        if b:
            tokens += b
            tokens.append(self.sep_id)
        word_starts = None
        if starts is not None:
            sa = list(chain.from_iterable(starts[a_ref[0]][a_ref[1]:a_ref[2]]))[fa:len(a) + fa]
            sb = list(chain.from_iterable(starts[b_ref[0]][b_ref[1]:b_ref[2]]))[fb:len(b) + fb]
            word_starts = [True, *sa, True] + ([*sb, True] if b else [])
        special = self._special_docs
        clean = special is not None and a_ref[0] not in special and b_ref[0] not in special
        return self.mask(tokens, rng, word_starts, random_next, (len(a), len(b)) if clean else None)

    # ------------------------------------------------------------------------------------------- masking
    def mask(self, tokens: list[int], rng: random.Random, word_starts: list[bool] | None = None,
             is_random_next: bool = False, clean_layout: tuple[int, int] | None = None) -> Instance:
        """Choose and apply the masked-LM predictions of one sequence (`tokens` is modified in place).

        `clean_layout` = (len A, len B) of a `<s> A </s> B </s>` layout whose text is known to hold no
        special ids: the candidates are then the A and B spans, without a token-by-token scan.
        """
        s = self.settings
        rand = rng.random
        never = self.never_mask
        n = min(s.max_predictions_per_seq, max(1, int(round(len(tokens) * s.masked_lm_prob))))
        if word_starts is None:
            if clean_layout is not None:
                len_a, len_b = clean_layout
                candidates = list(range(1, len_a + 1))
                if len_b:
                    candidates += range(len_a + 2, len_a + 2 + len_b)
            else:
                candidates = [k for k, t in enumerate(tokens) if t not in never]
            n = min(n, len(candidates))
            _partial_shuffle(candidates, n, rand)
            positions = sorted(candidates[:n])
        else:
            positions = sorted(self._whole_words(tokens, word_starts, n, rand))
        labels = [tokens[k] for k in positions]
        repl = self.replacements
        for k in positions:
            if rand() < 0.8:
                tokens[k] = self.mask_id
            elif rand() < 0.5:
                pass  # keep the original token
            else:
                tokens[k] = repl[int(rand() * len(repl))]
        return Instance(tokens, positions, labels, is_random_next)

    def _whole_words(self, tokens: list[int], word_starts: list[bool], n: int, rand: Any) -> list[int]:
        never = self.never_mask
        words: list[list[int]] = []
        after_special = True  # a special token ends a word even when the next token is not marked as a start
        for k, t in enumerate(tokens):
            if t in never:
                after_special = True
                continue
            if words and not word_starts[k] and not after_special:
                words[-1].append(k)
            else:
                words.append([k])
            after_special = False
        _partial_shuffle(words, len(words), rand)
        chosen: list[int] = []
        for word in words:
            if len(chosen) >= n:
                break
            if len(chosen) + len(word) > n:
                continue  # a whole word that does not fit is skipped; a shorter one later may
            chosen.extend(word)
        return chosen


def _partial_shuffle(items: list, k: int, rand: Any) -> None:
    """Fisher-Yates on the first k places: items[:k] becomes a uniform random k-subset in random order."""
    n = len(items)
    for i in range(min(k, n - 1)):
        j = i + int(rand() * (n - i))
        items[i], items[j] = items[j], items[i]


def _trim_pair(len_a: int, len_b: int, max_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """How many tokens to drop from (front of A, back of A, front of B, back of B): one token at a time from
    the longer segment (B on ties), from its front or back at random, until both fit."""
    fa = ba = fb = bb = 0
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            if rng.random() < 0.5:
                fa += 1
            else:
                ba += 1
            len_a -= 1
        else:
            if rng.random() < 0.5:
                fb += 1
            else:
                bb += 1
            len_b -= 1
    return fa, ba, fb, bb
