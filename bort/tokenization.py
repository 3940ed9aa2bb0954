"""Tokenizers for Bort and BERT: WordPiece and byte-level BPE on top of the `tokenizers` library.

The original Bort ran GluonNLP's pure-Python GPT-2 BPE over a RoBERTa vocabulary stored as a GluonNLP vocab
JSON; BERT used WordPiece over a `vocab.txt`. Both are rebuilt here from their vocabulary files with the Rust
`tokenizers` models, so the ids are those of the originals while encoding runs at native speed.

`load_tokenizer` reads every vocabulary layout we meet (WordPiece `vocab.txt`, byte-level BPE `vocab.json` +
`merges.txt` or GPT-2's `encoder.json` + `vocab.bpe`, GluonNLP vocab JSON, `tokenizer.json`, a Hugging Face
model directory); `train_tokenizer` learns a new vocabulary; `BortTokenizer` adds the special tokens the way
the originals did and pads batches.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .atomic import atomic_write_text

__all__ = [
    "WORDPIECE",
    "BPE",
    "SpecialTokens",
    "BERT_SPECIAL_TOKENS",
    "ROBERTA_SPECIAL_TOKENS",
    "GPT2_SPECIAL_TOKENS",
    "Encoding",
    "BortTokenizer",
    "BORT_VOCABULARY",
    "load_tokenizer",
    "tokenizer_in",
    "train_tokenizer",
    "add_train_tokenizer_args",
    "run_train_tokenizer",
    "add_tokenize_args",
    "run_tokenize",
]

WORDPIECE = "wordpiece"
BPE = "bpe"
KINDS = (WORDPIECE, BPE)

# The released Bort's vocabulary (RoBERTa's byte-level BPE, 50,265 ids; MIT, see its README), shipped with the
# package because `bort.params` holds weights only: `load_tokenizer(BORT_VOCABULARY)`.
BORT_VOCABULARY = Path(__file__).parent / "resources" / "bort-vocab"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class SpecialTokens:
    """Special token strings of one convention. `cls` doubles as BOS and `sep` as EOS."""

    cls: str
    sep: str
    pad: str
    unk: str
    mask: str | None


BERT_SPECIAL_TOKENS = SpecialTokens(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]")
ROBERTA_SPECIAL_TOKENS = SpecialTokens(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>")
# GPT-2's vocabulary has a single special token and no mask; it stands in for all roles.
GPT2_SPECIAL_TOKENS = SpecialTokens(
    cls="<|endoftext|>", sep="<|endoftext|>", pad="<|endoftext|>", unk="<|endoftext|>", mask=None
)


@dataclass
class Encoding:
    """One encoded sequence (or pair) with its special tokens."""

    ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    tokens: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class BortTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token conventions of BERT (WordPiece) or RoBERTa/Bort (BPE).

    Pairs are encoded as `[CLS] A [SEP] B [SEP]` (token types 0…0 1…1) for WordPiece, and as Bort/GluonNLP's
    `<s> A </s> B </s>` for BPE, or Hugging Face RoBERTa's `<s> A </s></s> B </s>` with
    `roberta_pair_style=True` (BPE token types are all 0; the option does not apply to WordPiece).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        kind: str,
        special_tokens: SpecialTokens,
        *,
        roberta_pair_style: bool = False,
        lowercase: bool | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.special_tokens = special_tokens
        self.lowercase = lowercase
        self.roberta_pair_style = bool(roberta_pair_style) and kind == BPE
        self._tok = tokenizer
        # A loaded tokenizer.json may carry its own truncation/padding; we do both ourselves.
        tokenizer.no_truncation()
        tokenizer.no_padding()

        def lookup(role: str, token: str | None) -> int | None:
            if token is None:
                return None
            idx = tokenizer.token_to_id(token)
            if idx is None:
                raise ValueError(f"special token {token!r} ({role}) is not in the vocabulary")
            return idx

        self.cls_token_id: int = lookup("cls", special_tokens.cls)  # type: ignore[assignment]
        self.sep_token_id: int = lookup("sep", special_tokens.sep)  # type: ignore[assignment]
        self.pad_token_id: int = lookup("pad", special_tokens.pad)  # type: ignore[assignment]
        self.unk_token_id: int = lookup("unk", special_tokens.unk)  # type: ignore[assignment]
        self.mask_token_id: int | None = lookup("mask", special_tokens.mask)

        # Registering the specials makes "[MASK]"/"<mask>" in raw text map to their ids (as the originals do)
        # and lets decode() skip them. RoBERTa's mask swallows the space before it.
        tokenizer.add_special_tokens(
            [
                AddedToken(tok, special=True, normalized=False, lstrip=(kind == BPE and tok == special_tokens.mask))
                for tok in dict.fromkeys(
                    t for t in (special_tokens.cls, special_tokens.sep, special_tokens.pad,
                                special_tokens.unk, special_tokens.mask) if t is not None
                )
            ]
        )
        # Cached: the embedding size must not drift, so the backend's vocabulary is fixed from here on.
        self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        # The post-processor only matters to other users of the saved tokenizer.json; encode() adds the
        # specials itself so that truncation can see the whole layout.
        tokenizer.post_processor = self._post_processor()

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def backend(self) -> Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of rows an embedding matrix needs (largest id + 1)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def cls_token(self) -> str:
        return self.special_tokens.cls

    @property
    def sep_token(self) -> str:
        return self.special_tokens.sep

    @property
    def pad_token(self) -> str:
        return self.special_tokens.pad

    @property
    def unk_token(self) -> str:
        return self.special_tokens.unk

    @property
    def mask_token(self) -> str | None:
        return self.special_tokens.mask

    bos_token = cls_token
    eos_token = sep_token

    @property
    def bos_token_id(self) -> int:
        return self.cls_token_id

    @property
    def eos_token_id(self) -> int:
        return self.sep_token_id

    @property
    def all_special_ids(self) -> set[int]:
        ids = {self.cls_token_id, self.sep_token_id, self.pad_token_id, self.unk_token_id}
        if self.mask_token_id is not None:
            ids.add(self.mask_token_id)
        return ids

    def __repr__(self) -> str:
        style = " roberta_pair_style" if self.roberta_pair_style else ""
        return f"BortTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, lowercase={self.lowercase}{style})"

    # ----------------------------------------------------------------------------------------------- lookups
    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """Subword tokens of `text`, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    # ----------------------------------------------------------------------------------------------- encoding
    def num_special_tokens(self, pair: bool = False) -> int:
        """How many special tokens `encode` adds to a single sequence or a pair."""
        if not pair:
            return 2
        return 4 if self.roberta_pair_style else 3

    def encode(
        self, text: str, pair: str | None = None, max_length: int | None = None, truncation: bool = True
    ) -> Encoding:
        """Encode `text` (and `pair`) with special tokens; truncate longest-first to `max_length` tokens."""
        _check_text(text)
        a = self._tok.encode(text, add_special_tokens=False)
        b = None
        if pair is not None:
            _check_text(pair)
            b = self._tok.encode(pair, add_special_tokens=False)
        return self._assemble(a, b, max_length, truncation)

    def encode_batch(
        self,
        texts: Sequence[str] | Sequence[tuple[str, str]],
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Encode many texts or (A, B) pairs; right-pad with the pad id.

        `padding`: True/"longest" pads to the longest row, "max_length" to `max_length`, False not at all.
        `return_tensors`: "pt" gives `torch.long` tensors, None plain lists.
        Returns a dict with `input_ids`, `attention_mask`, `token_type_ids`.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of texts or pairs, not a single string")
        texts = list(texts)
        is_pair = [isinstance(t, (tuple, list)) for t in texts]
        if any(is_pair) and not all(is_pair):
            raise ValueError("encode_batch got a mix of single texts and pairs")
        if texts and is_pair[0]:
            for t in texts:
                if len(t) != 2:
                    raise ValueError(f"a pair must have two texts, got {len(t)}")
                _check_text(t[0])
                _check_text(t[1])
            firsts = self._tok.encode_batch([t[0] for t in texts], add_special_tokens=False)
            seconds = self._tok.encode_batch([t[1] for t in texts], add_special_tokens=False)
        else:
            for t in texts:
                _check_text(t)
            firsts = self._tok.encode_batch(texts, add_special_tokens=False)
            seconds = [None] * len(texts)
        encodings = [self._assemble(a, b, max_length, truncation) for a, b in zip(firsts, seconds)]
        return self.pad(encodings, max_length=max_length, padding=padding, return_tensors=return_tensors)

    def pad(
        self,
        encodings: Sequence[Encoding],
        max_length: int | None = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, Any]:
        """Right-pad encodings into a batch dict (see `encode_batch`)."""
        if padding is True or padding == "longest":
            width = max((len(e) for e in encodings), default=0)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError('padding="max_length" needs max_length')
            width = max_length
        elif padding is False:
            width = None
        else:
            raise ValueError(f'padding must be True, False, "longest" or "max_length", got {padding!r}')

        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for e in encodings:
            extra = 0 if width is None else max(width - len(e), 0)
            batch["input_ids"].append(e.ids + [self.pad_token_id] * extra)
            batch["attention_mask"].append(e.attention_mask + [0] * extra)
            batch["token_type_ids"].append(e.token_type_ids + [0] * extra)

        if return_tensors is None:
            return batch
        if return_tensors != "pt":
            raise ValueError(f'return_tensors must be "pt" or None, got {return_tensors!r}')
        if len({len(row) for row in batch["input_ids"]}) > 1:
            raise ValueError("rows differ in length; use padding=True to return tensors")
        import torch  # only needed here, so the tokenizer itself does not depend on torch

        if not encodings:
            return {k: torch.zeros((0, 0), dtype=torch.long) for k in batch}
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list or a 1-D tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _assemble(self, a: Any, b: Any | None, max_length: int | None, truncation: bool) -> Encoding:
        """Add special tokens around the raw encodings `a` (and `b`), truncating longest-first."""
        a_ids, a_tok = list(a.ids), list(a.tokens)
        b_ids, b_tok = (list(b.ids), list(b.tokens)) if b is not None else ([], [])
        if max_length is not None and truncation:
            budget = max_length - self.num_special_tokens(b is not None)
            if budget < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
            if b is None:
                del a_ids[budget:], a_tok[budget:]
            else:
                # Like BERT's _truncate_seq_pair: drop from the longer side, from the second one on ties.
                while len(a_ids) + len(b_ids) > budget:
                    if len(a_ids) > len(b_ids):
                        a_ids.pop(), a_tok.pop()
                    else:
                        b_ids.pop(), b_tok.pop()

        cls, sep = self.cls_token_id, self.sep_token_id
        cls_t, sep_t = self.special_tokens.cls, self.special_tokens.sep
        ids = [cls] + a_ids + [sep]
        tokens = [cls_t] + a_tok + [sep_t]
        types = [0] * len(ids)
        if b is not None:
            n_mid = 2 if self.roberta_pair_style else 1
            # Only BERT distinguishes the second segment; RoBERTa/Bort have no token-type embeddings.
            second_type = 1 if self.kind == WORDPIECE else 0
            tail_ids = [sep] * (n_mid - 1) + b_ids + [sep]
            tail_tokens = [sep_t] * (n_mid - 1) + b_tok + [sep_t]
            first_len = len(ids) + n_mid - 1 if self.kind == BPE else len(ids)
            ids += tail_ids
            tokens += tail_tokens
            types = [0] * first_len + [second_type] * (len(ids) - first_len)
        return Encoding(ids=ids, attention_mask=[1] * len(ids), token_type_ids=types, tokens=tokens)

    def _post_processor(self) -> Any:
        cls = (self.special_tokens.cls, self.cls_token_id)
        sep = (self.special_tokens.sep, self.sep_token_id)
        if self.kind == WORDPIECE:
            return processors.BertProcessing(sep, cls)
        if self.roberta_pair_style:
            return processors.RobertaProcessing(sep, cls, trim_offsets=True, add_prefix_space=False)
        c, s = cls[0], sep[0]
        specials = [cls] if c == s else [cls, sep]
        return processors.TemplateProcessing(single=f"{c} $A {s}", pair=f"{c} $A {s} $B {s}", special_tokens=specials)

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, directory: PathLike, model_max_length: int | None = None) -> Path:
        """Write `tokenizer.json`, the model's own vocabulary files (`vocab.txt`, or `vocab.json` +
        `merges.txt`) and Hugging Face's `tokenizer_config.json` + `special_tokens_map.json` into `directory`,
        so that `transformers.AutoTokenizer.from_pretrained(directory)` gives our ids and can pad.
        `model_max_length` (the model's positions) is what HF truncates to when no `max_length` is given.
        Returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        self._tok.model.save(str(out))
        specials = self._special_tokens_map()
        config: dict[str, Any] = {"tokenizer_class": self.hf_tokenizer_class(), **specials,
                                  "clean_up_tokenization_spaces": False}
        if self.kind == WORDPIECE:
            # BertTokenizerFast rebuilds its normalizer from these (transformers ≥ 5 ignores tokenizer.json's).
            config.update(do_lower_case=bool(self.lowercase), strip_accents=None, tokenize_chinese_chars=True)
        else:
            config.update(add_prefix_space=False, trim_offsets=True)
        if model_max_length is not None:
            config["model_max_length"] = int(model_max_length)
        for name, values in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
            atomic_write_text(out / name, json.dumps(values, indent=2, sort_keys=True) + "\n")
        return out

    def _special_tokens_map(self) -> dict[str, str]:
        s = self.special_tokens
        roles = {"cls_token": s.cls, "sep_token": s.sep, "pad_token": s.pad, "unk_token": s.unk,
                 "bos_token": s.cls, "eos_token": s.sep, "mask_token": s.mask}
        return {role: token for role, token in roles.items() if token is not None}

    def hf_tokenizer_class(self) -> str:
        """The `transformers` class that reproduces this tokenizer from its saved files.

        `BertTokenizerFast` and `RobertaTokenizerFast` rebuild their pipeline from the vocabulary and their
        own defaults (transformers ≥ 5 does so even when a tokenizer.json is present), so they are named only
        when those defaults are exactly ours: BERT's WordPiece, and RoBERTa's byte-level BPE with HF's
        `<s> A </s></s> B </s>` pairs. Anything else — Bort's `<s> A </s> B </s>` pairs, a lowercasing BPE,
        GPT-2's single special token — gets `PreTrainedTokenizerFast`, which runs tokenizer.json as saved."""
        if self.kind == WORDPIECE and self._is_standard_pipeline(_build_wordpiece({}, bool(self.lowercase))) \
                and self.special_tokens == BERT_SPECIAL_TOKENS:
            return "BertTokenizerFast"
        if self.kind == BPE and self.roberta_pair_style and not self.lowercase \
                and self.special_tokens == ROBERTA_SPECIAL_TOKENS \
                and self._is_standard_pipeline(_build_bpe({}, [], None, False, "reference")):
            return "RobertaTokenizerFast"
        return "PreTrainedTokenizerFast"

    def _is_standard_pipeline(self, reference: Tokenizer) -> bool:
        """Whether our normalizer, pre-tokenizer and model settings are those of `reference` (vocabulary aside)."""
        def settings(tok: Tokenizer) -> Any:
            model = {k: v for k, v in json.loads(tok.model.__getstate__()).items()
                     if k not in ("vocab", "merges", "unk_token")}
            return (_component_spec(tok.normalizer), _component_spec(tok.pre_tokenizer), model)

        return settings(self._tok) == settings(reference)

    # ----------------------------------------------------------------------------------------------- HF call
    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode the way a `transformers` tokenizer is called: one text (or pair) gives flat lists, a list of
        texts (with `text_pair` a list of the same length) gives one row each; `model(**tokenizer(...))` works.

        `padding`: False/"do_not_pad", True/"longest", or "max_length". `truncation`: True/"longest_first"
        cuts pairs from the longer side to `max_length`, False/"do_not_truncate" never; None (the default)
        truncates when `max_length` is given, as transformers does. `return_tensors`: None, "pt" or "np"."""
        single = isinstance(text, str)
        if single:
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError(f"text is one string, so text_pair must be one too, got {type(text_pair).__name__}")
            rows: list[Any] = [text] if text_pair is None else [(text, text_pair)]
        else:
            texts = list(text)
            if text_pair is None:
                rows = texts
            else:
                if isinstance(text_pair, str):
                    raise TypeError("text is a list, so text_pair must be a list of the same length, got a string")
                pairs = list(text_pair)
                if len(pairs) != len(texts):
                    raise ValueError(f"text has {len(texts)} entries but text_pair has {len(pairs)}")
                rows = list(zip(texts, pairs))
        if truncation is None:
            truncate = max_length is not None
        elif truncation in (True, "longest_first"):
            truncate = True
        elif truncation in (False, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(f'truncation must be True, False, None, "longest_first" or "do_not_truncate", '
                             f"got {truncation!r}")
        if truncate and max_length is None:
            raise ValueError("truncation needs max_length (this tokenizer does not know the model's length)")
        if padding == "do_not_pad":
            padding = False
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f'return_tensors must be "pt", "np" or None, got {return_tensors!r}')
        batch = self.encode_batch(rows, max_length=max_length, padding=padding, truncation=truncate,
                                  return_tensors="pt" if return_tensors == "np" else return_tensors)
        if return_tensors == "np":
            return {name: tensor.numpy() for name, tensor in batch.items()}
        if single and return_tensors is None:
            return {name: value[0] for name, value in batch.items()}
        return batch


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"expected a str to encode, got {type(text).__name__}")


# =================================================================================================== building
def _build_wordpiece(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    """BERT's tokenizer: clean text, split CJK, (lowercase + strip accents), split punctuation, WordPiece."""
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=BERT_SPECIAL_TOKENS.unk, max_input_chars_per_word=100))
    # strip_accents=None follows `lowercase`, exactly as BERT's uncased/cased models do.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], unk: str | None, lowercase: bool,
               source: str) -> Tokenizer:
    """GPT-2/RoBERTa byte-level BPE (no prefix space, GPT-2's split regex)."""
    try:
        model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=False)
    except Exception as err:  # the Rust error is terse; say which files did not fit together
        raise ValueError(f"{source}: vocabulary and merges do not fit together: {err}") from None
    tok = Tokenizer(model)
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _bpe_special_tokens(vocab: dict[str, int] | set[str], source: str) -> SpecialTokens:
    if ROBERTA_SPECIAL_TOKENS.cls in vocab:
        missing = [t for t in vars(ROBERTA_SPECIAL_TOKENS).values() if t not in vocab]
        if missing:
            raise ValueError(f"{source}: RoBERTa-style vocabulary lacks special tokens {missing}")
        return ROBERTA_SPECIAL_TOKENS
    if GPT2_SPECIAL_TOKENS.cls in vocab:
        return GPT2_SPECIAL_TOKENS
    raise ValueError(f"{source}: byte-level BPE vocabulary has neither RoBERTa's <s>/</s>/<pad>/<unk>/<mask> "
                     "nor GPT-2's <|endoftext|>")


# =================================================================================================== reading files
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: expected UTF-8 text, got undecodable bytes at offset {err.start}") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


def _read_wordpiece_vocab(path: Path) -> dict[str, int]:
    text = _read_text(path)
    if text.startswith("#version"):
        raise ValueError(f"{path}: this is a BPE merges file, expected a WordPiece vocab.txt (one token a line); "
                         "for BPE pass vocab.json together with merges.txt")
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the newline that ends the last line
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise ValueError(f"{path}: empty vocabulary, expected a WordPiece vocab.txt (one token a line)")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    _require_bert_specials(vocab, path)
    return vocab


def _require_bert_specials(vocab: dict[str, int] | set[str], source: Any) -> None:
    missing = [t for t in vars(BERT_SPECIAL_TOKENS).values() if t not in vocab]
    if missing:
        raise ValueError(f"{source}: expected a WordPiece vocabulary with BERT's special tokens, missing {missing}")


def _check_token_id_map(data: Any, path: Path) -> dict[str, int]:
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a JSON object mapping token to id, got "
                         f"{_json_type(data)} at top level ({path})")
    if not data:
        raise ValueError(f"{path.name}: empty vocabulary ({path})")
    ids = list(data.values())
    if all(type(i) is int for i in ids) and min(ids) >= 0 and len(set(ids)) == len(ids):
        return data  # the common case, checked in bulk
    seen: dict[int, str] = {}
    for token, idx in data.items():  # find the first offender to name it
        if type(idx) is not int or idx < 0:
            raise ValueError(f"{path.name}: expected a JSON object mapping token to id, got {idx!r} for "
                             f"token {token!r} ({path})")
        if idx in seen:
            raise ValueError(f"{path.name}: id {idx} is used by both {seen[idx]!r} and {token!r} ({path})")
        seen[idx] = token
    return data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = _read_text(path).replace("\r\n", "\n").split("\n")
    first = 1 if lines and lines[0].startswith("#version") else 0
    rules = [line for line in lines[first:] if line]
    if not rules:
        raise ValueError(f"{path}: no merge rules found, expected a BPE merges file")
    # One split over the whole file is several times faster than 50k per-line splits.
    symbols = " ".join(rules).split(" ")
    if len(symbols) != 2 * len(rules):
        for lineno, line in enumerate(lines, start=1):
            if lineno > first and line and len(line.split(" ")) != 2:
                raise ValueError(f"{path}: line {lineno}: expected a merge rule of two space-separated "
                                 f"symbols, got {line[:60]!r}")
    return list(zip(symbols[0::2], symbols[1::2]))


def _load_bpe_files(vocab: dict[str, int], vocab_path: Path, merges_path: Path, lowercase: bool | None,
                    roberta_pair_style: bool | None) -> BortTokenizer:
    """Byte-level BPE from an already checked token→id map and the merges file that goes with it."""
    if not merges_path.is_file():
        raise ValueError(f"{vocab_path}: byte-level BPE needs its merges file, not found: {merges_path}")
    merges = _read_merges(merges_path)
    specials = _bpe_special_tokens(vocab, str(vocab_path))
    tok = _build_bpe(vocab, merges, specials.unk, bool(lowercase), f"{vocab_path} + {merges_path}")
    return BortTokenizer(tok, BPE, specials, roberta_pair_style=bool(roberta_pair_style), lowercase=bool(lowercase))


def _infer_lowercase(tokens: Any) -> bool:
    """An uncased vocabulary has no uppercase letters outside its bracketed special tokens."""
    for tok in tokens:
        if tok != tok.lower() and not (tok.startswith("[") and tok.endswith("]")):
            return False
    return True


def _load_wordpiece_file(path: Path, lowercase: bool | None) -> BortTokenizer:
    vocab = _read_wordpiece_vocab(path)
    if lowercase is None:
        lowercase = _infer_lowercase(vocab)
    return BortTokenizer(_build_wordpiece(vocab, lowercase), WORDPIECE, BERT_SPECIAL_TOKENS, lowercase=lowercase)


# GluonNLP names of the special-token roles (Vocab.to_json() writes them under identifiers_to_tokens; before
# GluonNLP 0.7 padding/bos/eos sat at the top level of the JSON).
_GLUON_ROLES = ("padding_token", "bos_token", "eos_token", "mask_token", "cls_token", "sep_token")


def _load_gluon_vocab(path: Path, data: dict, merges: PathLike | None, lowercase: bool | None,
                      roberta_pair_style: bool | None) -> BortTokenizer:
    """A `gluonnlp.Vocab.to_json()` file: tokens in `idx_to_token` order, roles in `identifiers_to_tokens`."""
    idx_to_token = data.get("idx_to_token")
    if not isinstance(idx_to_token, list) or not all(isinstance(t, str) for t in idx_to_token):
        raise ValueError(f"{path}: GluonNLP vocab JSON must have 'idx_to_token' as a list of strings")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(idx_to_token):
        if tok in vocab:
            raise ValueError(f"{path}: token {tok!r} appears twice in idx_to_token (ids {vocab[tok]} and {i}); "
                             "this is the corrupted layout of GluonNLP < 0.7, re-save it with a newer GluonNLP")
        vocab[tok] = i
    token_to_idx = data.get("token_to_idx")
    if isinstance(token_to_idx, dict):
        wrong = [t for t, i in token_to_idx.items() if vocab.get(t) != i]
        if wrong:
            raise ValueError(f"{path}: token_to_idx disagrees with idx_to_token, e.g. for {wrong[0]!r}")

    roles: dict[str, str] = {}
    for key in _GLUON_ROLES:
        if isinstance(data.get(key), str):
            roles[key] = data[key]
    identifiers = data.get("identifiers_to_tokens") or {}
    if not isinstance(identifiers, dict):
        raise ValueError(f"{path}: 'identifiers_to_tokens' must be an object")
    roles.update({k: v for k, v in identifiers.items() if isinstance(v, str)})
    unk = data.get("unknown_token")

    is_wordpiece = roles.get("cls_token") == "[CLS]" or "[CLS]" in vocab
    if is_wordpiece:
        _require_bert_specials(vocab, path)
        if lowercase is None:
            lowercase = _infer_lowercase(vocab)
        return BortTokenizer(_build_wordpiece(vocab, lowercase), WORDPIECE, BERT_SPECIAL_TOKENS,
                             lowercase=lowercase)

    specials = SpecialTokens(
        cls=roles.get("bos_token") or roles.get("cls_token") or ROBERTA_SPECIAL_TOKENS.cls,
        sep=roles.get("eos_token") or roles.get("sep_token") or ROBERTA_SPECIAL_TOKENS.sep,
        pad=roles.get("padding_token") or ROBERTA_SPECIAL_TOKENS.pad,
        unk=unk or ROBERTA_SPECIAL_TOKENS.unk,
        mask=roles.get("mask_token") or (ROBERTA_SPECIAL_TOKENS.mask if ROBERTA_SPECIAL_TOKENS.mask in vocab
                                         else None),
    )
    missing = [t for t in vars(specials).values() if t is not None and t not in vocab]
    if missing:
        raise ValueError(f"{path}: special tokens {missing} named in the GluonNLP vocab are not in idx_to_token")
    if merges is None:
        candidates = [path.parent / "merges.txt", path.parent / "vocab.bpe"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ValueError(f"{path}: a GluonNLP BPE vocabulary needs its merges file; pass merges=... "
                             f"or put one at {candidates[0]}")
        merges_path = found[0]
    else:
        merges_path = Path(merges)
        if not merges_path.is_file():
            raise ValueError(f"{path}: merges file not found: {merges_path}")
    tok = _build_bpe(vocab, _read_merges(merges_path), specials.unk, bool(lowercase), f"{path} + {merges_path}")
    return BortTokenizer(tok, BPE, specials, roberta_pair_style=bool(roberta_pair_style), lowercase=bool(lowercase))


def _component_spec(component: Any) -> Any:
    """The JSON description of a normalizer/post-processor (None when absent)."""
    return None if component is None else json.loads(component.__getstate__())


def _wrap_tokenizer(tok: Tokenizer, path: Path, roberta_pair_style: bool | None) -> BortTokenizer:
    """Wrap a tokenizer read from a tokenizer.json; its model type decides the conventions."""
    model_type = type(tok.model).__name__
    vocab = tok.get_vocab(with_added_tokens=True)
    if model_type == "WordPiece":
        kind, specials = WORDPIECE, BERT_SPECIAL_TOKENS
        _require_bert_specials(vocab, path)
    elif model_type == "BPE":
        kind, specials = BPE, _bpe_special_tokens(vocab, str(path))
    else:
        raise ValueError(f"{path}: expected a WordPiece or BPE model in tokenizer.json, got {model_type!r}")
    if roberta_pair_style is None:
        roberta_pair_style = _declares_double_separator(_component_spec(tok.post_processor))
    return BortTokenizer(tok, kind, specials, roberta_pair_style=roberta_pair_style,
                         lowercase=_normalizer_lowercases(_component_spec(tok.normalizer)))


def _load_tokenizer_json(path: Path, roberta_pair_style: bool | None) -> BortTokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:
        # Say what is wrong in our words: bad JSON, or JSON that is not a tokenizer.
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError(f"{path}: expected a tokenizer.json object with a 'model' entry") from None
        raise ValueError(f"{path}: not a valid tokenizer.json: {err}") from None
    return _wrap_tokenizer(tok, path, roberta_pair_style)


def _normalizer_lowercases(spec: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    kind = spec.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(spec.get("lowercase"))
    if kind == "Sequence":
        return any(_normalizer_lowercases(n) for n in spec.get("normalizers", []))
    return False


def _declares_double_separator(spec: Any) -> bool:
    """Whether a tokenizer.json post-processor puts two separators between the segments (HF RoBERTa)."""
    if not isinstance(spec, dict):
        return False
    if spec.get("type") == "RobertaProcessing":
        return True
    if spec.get("type") == "Sequence":
        return any(_declares_double_separator(p) for p in spec.get("processors", []))
    if spec.get("type") == "TemplateProcessing":
        between = 0
        for piece in spec.get("pair", []):
            if "Sequence" in piece:
                if piece["Sequence"].get("id") == "B":
                    return between > 1
                between = 0
            elif "SpecialToken" in piece:
                between += 1
    return False


def _load_json_file(path: Path, merges: PathLike | None, lowercase: bool | None,
                    roberta_pair_style: bool | None) -> BortTokenizer:
    if path.name.endswith("tokenizer.json"):  # parsed by the Rust loader only: big files, twice as fast
        return _load_tokenizer_json(path, roberta_pair_style)
    data = _read_json(path)
    if isinstance(data, dict) and "idx_to_token" in data:
        return _load_gluon_vocab(path, data, merges, lowercase, roberta_pair_style)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):  # a tokenizer.json under another name
        try:
            tok = Tokenizer.from_str(json.dumps(data))
        except Exception as err:
            raise ValueError(f"{path}: not a valid tokenizer.json: {err}") from None
        return _wrap_tokenizer(tok, path, roberta_pair_style)
    # Otherwise a token→id map (vocab.json / encoder.json); its merges sit beside it unless given.
    vocab = _check_token_id_map(data, path)
    if merges is not None:
        merges_path = Path(merges)
    elif path.name == "encoder.json":
        merges_path = path.parent / "vocab.bpe"
    else:
        merges_path = path.parent / "merges.txt"
    return _load_bpe_files(vocab, path, merges_path, lowercase, roberta_pair_style)


def _load_directory(path: Path, merges: PathLike | None, lowercase: bool | None,
                    roberta_pair_style: bool | None) -> BortTokenizer:
    if lowercase is None:
        # A Hugging Face model directory says whether it lowercases.
        config = path / "tokenizer_config.json"
        if config.is_file():
            cfg = _read_json(config)
            if isinstance(cfg, dict) and isinstance(cfg.get("do_lower_case"), bool):
                lowercase = cfg["do_lower_case"]
    if (path / "tokenizer.json").is_file():
        return _load_json_file(path / "tokenizer.json", merges, lowercase, roberta_pair_style)
    if (path / "vocab.txt").is_file():
        return _load_wordpiece_file(path / "vocab.txt", lowercase)
    if (path / "vocab.json").is_file():
        return _load_json_file(path / "vocab.json", merges, lowercase, roberta_pair_style)
    if (path / "encoder.json").is_file():
        return _load_json_file(path / "encoder.json", merges, lowercase, roberta_pair_style)
    gluon = sorted(path.glob("*.vocab"))
    if len(gluon) == 1:
        return _load_json_file(gluon[0], merges, lowercase, roberta_pair_style)
    raise ValueError(f"{path}: no tokenizer found; expected tokenizer.json, vocab.txt, vocab.json + merges.txt, "
                     "encoder.json + vocab.bpe, or one GluonNLP *.vocab JSON")


# The files that mean "a tokenizer lives here" in a checkpoint directory (ours, HF's, a fine-tuning best/).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "encoder.json")


def tokenizer_in(directory: PathLike) -> BortTokenizer | None:
    """The tokenizer saved in a checkpoint `directory`, or None when it holds none (e.g. weights only).
    A tokenizer that is there but broken raises ValueError naming the file, rather than being skipped."""
    path = Path(directory)
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    return load_tokenizer(path)


def load_tokenizer(
    path: PathLike | tuple[PathLike, PathLike],
    lowercase: bool | None = None,
    *,
    merges: PathLike | None = None,
    roberta_pair_style: bool | None = None,
) -> BortTokenizer:
    """Load a tokenizer from vocabulary files.

    `path` may be a WordPiece `vocab.txt`; a byte-level BPE `vocab.json`/`encoder.json` (its `merges.txt`/
    `vocab.bpe` beside it, or given as `merges`), or a `(vocab, merges)` pair; a GluonNLP vocab JSON (BPE ones
    with `merges` or a merges file beside them); a `tokenizer.json`; or a directory holding any of these
    (a Hugging Face model directory included).

    `lowercase` (vocabulary files only; a tokenizer.json carries its own normalizer): None infers it for
    WordPiece from the vocabulary (uppercase tokens mean cased) or a directory's `tokenizer_config.json`;
    BPE defaults to cased. `roberta_pair_style`: None keeps what a tokenizer.json declares and otherwise uses
    Bort's `<s> A </s> B </s>`; True gives HF RoBERTa's `<s> A </s></s> B </s>`.

    Raises ValueError naming the file and what was expected when a file is broken or of an unknown kind.
    """
    if isinstance(path, (tuple, list)):
        if len(path) != 2:
            raise ValueError(f"expected a (vocab.json, merges.txt) pair, got {len(path)} paths")
        vocab_path = Path(path[0])
        if not vocab_path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {vocab_path}")
        return _load_json_file(vocab_path, path[1], lowercase, roberta_pair_style)
    p = Path(path)
    if p.is_dir():
        return _load_directory(p, merges, lowercase, roberta_pair_style)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file or directory not found: {p}")
    with p.open("rb") as fh:
        head = fh.read(64).lstrip()
    # vocab.txt starts with "[PAD]", so only "{" (or the name) marks JSON.
    if head.startswith(b"{") or p.suffix in (".json", ".vocab"):
        return _load_json_file(p, merges, lowercase, roberta_pair_style)
    return _load_wordpiece_file(p, lowercase)


# =================================================================================================== training
def _expand_files(files: Sequence[PathLike]) -> list[str]:
    out: list[str] = []
    for f in files:
        f = os.fspath(f)
        if glob.has_magic(f):
            matches = sorted(glob.glob(f, recursive=True))
            if not matches:
                raise ValueError(f"no files match {f!r}")
            out.extend(m for m in matches if os.path.isfile(m))
        elif not os.path.isfile(f):
            raise FileNotFoundError(f"training file not found: {f}")
        else:
            out.append(f)
    if not out:
        raise ValueError("no training files given")
    return out


def _model_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    # tokenizers writes merges as [a, b] pairs (older versions: "a b" strings).
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]  # type: ignore[misc]


def train_tokenizer(
    files: Sequence[PathLike],
    kind: str,
    vocab_size: int,
    output_dir: PathLike,
    lowercase: bool = True,
    min_frequency: int = 2,
    show_progress: bool = True,
    roberta_pair_style: bool = False,
) -> BortTokenizer:
    """Learn a WordPiece or byte-level BPE vocabulary from text files (globs allowed) and save it.

    The `tokenizers` trainers stream the files (one text a line). Special tokens follow BERT
    (`[PAD] [UNK] [CLS] [SEP] [MASK]` = ids 0-4) or RoBERTa (`<s> <pad> </s> <unk>` = 0-3, `<mask>` last).
    Writes `tokenizer.json` and `vocab.txt` (or `vocab.json` + `merges.txt`) to `output_dir`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    paths = _expand_files(files)
    n_special = 5
    if vocab_size <= n_special:
        raise ValueError(f"vocab_size={vocab_size} is too small for the {n_special} special tokens")

    if kind == WORDPIECE:
        specials = BERT_SPECIAL_TOKENS
        draft = _build_wordpiece({specials.unk: 0}, lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=[specials.pad, specials.unk, specials.cls, specials.sep, specials.mask],
            continuing_subword_prefix="##",
        )
        draft.train(paths, trainer)
        # Rebuild through the loader's constructor so a trained and a reloaded tokenizer are the same object.
        tok = _build_wordpiece(draft.get_vocab(with_added_tokens=False), lowercase)
        result = BortTokenizer(tok, WORDPIECE, specials, lowercase=lowercase)
    else:
        specials = ROBERTA_SPECIAL_TOKENS
        draft = _build_bpe({}, [], None, lowercase, "training")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,  # <mask> is appended last, as in RoBERTa
            min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=[specials.cls, specials.pad, specials.sep, specials.unk],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        )
        draft.train(paths, trainer)
        vocab = draft.get_vocab(with_added_tokens=False)
        vocab[specials.mask] = len(vocab)  # type: ignore[index]
        tok = _build_bpe(vocab, _model_merges(draft), specials.unk, lowercase, "training")
        result = BortTokenizer(tok, BPE, specials, roberta_pair_style=roberta_pair_style, lowercase=lowercase)
    result.save(output_dir)
    return result
