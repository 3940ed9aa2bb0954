"""Build a small Bort-shaped GluonNLP model with random weights and record its outputs.

Run with the side environment's python (MXNet 1.9.1 + GluonNLP 0.10.0, made by
`../shared/tools/mxnet-reference-env.sh`), never with the project's own:

    $(bash ../shared/tools/mxnet-reference-env.sh) tests/gluon_reference/make_bort_reference.py OUT_DIR \
        --layers 2 --units 64 --hidden 48 --heads 4 --vocab 100 --max-length 32

It writes OUT_DIR/model.params (Gluon `save_parameters`), OUT_DIR/reference.npz (inputs, valid_length,
masked_positions, sequence_output, mlm_logits) and OUT_DIR/config.json (the sizes).

The model follows alexa/bort's `get_bort_model`: GluonNLP's BERTEncoder (post-LN cells, erf GELU,
LayerNorm eps 1e-5, learned positions from 0, dropout 0.1) inside a BERTModel without token types, pooler
or classifier, and the MLM decoder Dense → GELU → LayerNorm → Dense tied to the word embedding.
GluonNLP 0.10 no longer accepts three of get_bort_model's encoder arguments (`attention_cell='multi_head'`,
`scaled=True`, `use_residual=True`); they are what its cell always does. Nor does its BERTModel take
`embed_dropout`, so the word embedding is built as GluonNLP 0.8.3 (Bort's version) built it:
Embedding followed by Dropout(0.1). Dropout is inactive here: the forward pass runs outside
`autograd.record()`, i.e. in inference mode.
"""
from __future__ import annotations

import argparse
import json
import os

import mxnet as mx
import numpy as np
from gluonnlp.model.bert import BERTEncoder, BERTModel
from mxnet.gluon import nn

PAD_ID = 1  # Bort's <pad>


def build_model(args: argparse.Namespace) -> BERTModel:
    """The Bort architecture at the sizes given on the command line."""
    encoder = BERTEncoder(num_layers=args.layers, units=args.units, hidden_size=args.hidden,
                          max_length=args.max_length, num_heads=args.heads, dropout=0.1,
                          output_attention=False, output_all_encodings=False,
                          activation="gelu", layer_norm_eps=1e-5)
    word_embed = nn.HybridSequential(prefix="word_embed_")
    with word_embed.name_scope():
        word_embed.add(nn.Embedding(input_dim=args.vocab, output_dim=args.units))
        word_embed.add(nn.Dropout(rate=0.1))
    return BERTModel(encoder, vocab_size=args.vocab, token_type_vocab_size=None, units=args.units,
                     embed_size=args.units, word_embed=word_embed, token_type_embed=None,
                     use_pooler=False, use_decoder=True, use_classifier=False,
                     use_token_type_embed=False)


def run(model: BERTModel, batch: dict[str, np.ndarray]) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Sequence output and masked-position logits; outside autograd.record(), so dropout is off."""
    return model(mx.nd.array(batch["input_ids"], dtype="float32"), None,
                 mx.nd.array(batch["valid_length"], dtype="float32"),
                 mx.nd.array(batch["masked_positions"], dtype="float32"))


def randomise(model: BERTModel, batch: dict[str, np.ndarray], rng: np.random.RandomState) -> None:
    """Give every parameter non-trivial values, so a swapped or dropped tensor cannot go unnoticed:
    LayerNorm gammas away from 1, betas and biases away from 0."""
    model.initialize(mx.init.Zero())
    run(model, batch)  # Dense input sizes are deferred until a first forward pass fixes them
    for name, param in model.collect_params().items():
        shape = param.shape
        if name.endswith("gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(("beta", "bias")):
            value = 0.1 * rng.standard_normal(shape)
        elif name.endswith("position_weight") or "embedding" in name:
            value = 0.3 * rng.standard_normal(shape)
        else:  # Dense weights, (out, in): keep activations near unit scale
            value = rng.standard_normal(shape) / np.sqrt(shape[-1])
        param.set_data(mx.nd.array(value.astype(np.float32)))


def make_batch(args: argparse.Namespace, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """A right-padded batch with different valid lengths (one full row, one very short)."""
    lengths = np.linspace(args.seq_len, 2, args.batch).round().astype(np.int64)
    ids = rng.randint(3, args.vocab, size=(args.batch, args.seq_len)).astype(np.int64)
    ids[:, 0] = 0  # <s>
    for row, length in enumerate(lengths):
        ids[row, length:] = PAD_ID
    # Masked positions must point at real tokens; rows shorter than num_masked repeat some.
    positions = np.stack([rng.choice(length, size=args.num_masked, replace=length < args.num_masked)
                          for length in lengths]).astype(np.int64)
    return {"input_ids": ids, "valid_length": lengths, "masked_positions": positions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--units", type=int, default=64, help="d_model (Gluon units)")
    parser.add_argument("--hidden", type=int, default=48, help="FFN size (Gluon hidden_size)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=12)
    parser.add_argument("--num-masked", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.seq_len > args.max_length:
        parser.error("--seq-len must not exceed --max-length")

    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.RandomState(args.seed)
    mx.random.seed(args.seed)
    model = build_model(args)
    batch = make_batch(args, rng)
    randomise(model, batch, rng)
    sequence, logits = run(model, batch)
    model.save_parameters(os.path.join(args.out_dir, "model.params"))
    np.savez(os.path.join(args.out_dir, "reference.npz"), **batch,
             sequence_output=sequence.asnumpy().astype(np.float32),
             mlm_logits=logits.asnumpy().astype(np.float32))
    config = {"num_layers": args.layers, "units": args.units, "hidden_size": args.hidden,
              "num_heads": args.heads, "vocab_size": args.vocab, "max_length": args.max_length,
              "layer_norm_eps": 1e-5, "dropout": 0.1, "seed": args.seed,
              "mxnet": mx.__version__, "gluonnlp": __import__("gluonnlp").__version__}
    with open(os.path.join(args.out_dir, "config.json"), "w") as handle:
        json.dump(config, handle, indent=1)


if __name__ == "__main__":
    main()
