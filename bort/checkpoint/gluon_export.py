"""Writing MXNet/Gluon `.params` files that the original Bort code loads: the NDArray list writer and our
models in the original's parameter names and order.

`write_params` writes what MXNet 1.x's `mx.nd.save(path, {name: array})` (and so Gluon's `save_parameters`)
writes for dense arrays: the list header, each array in the V2 layout, then the name table (the layouts are
described in `bort.checkpoint.gluon`, the reader):

    uint64 0x112, uint64 0, uint64 n,
    n × (uint32 0xF993FAC9, int32 0 (dense), int32 ndim, ndim × int64 dim, int32 1 (cpu), int32 0 (device id),
         int32 type flag, data little-endian C order),
    uint64 n, n × (uint64 length, UTF-8 name)

`export_gluon` lays a model out as the original code builds it: `get_bort_model(...)`'s `BortModel` (encoder,
and the MLM decoder for a masked-LM model) or, for a sentence classifier or regressor, `finetune_bort.py`'s
`BortClassifier` (`bort.*` + `classifier.*`, with its default dropout layers, so the two Dense layers are
`classifier.1` and `classifier.3`). The order is Gluon's `save_parameters` order, so the file is byte for byte
what the original would save holding the same weights. What the original graph cannot compute (another
attention mechanism, pre-LN, token types, ...) is refused with the reason before anything is written.
"""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..atomic import atomic_path
from .errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["export_gluon", "gluon_export_problems", "gluon_state", "original_preset", "write_params"]

LIST_MAGIC = 0x112
V2_MAGIC = 0xF993FAC9
DENSE_STORAGE = 0
CPU_DEVICE, DEVICE_ID = 1, 0
# mshadow type flags of the dtypes MXNet 1.x saves (bfloat16 has no numpy dtype and is never written).
TYPE_FLAGS: dict[np.dtype, int] = {
    np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("uint8"): 3,
    np.dtype("int32"): 4, np.dtype("int8"): 5, np.dtype("int64"): 6, np.dtype("bool"): 7,
    np.dtype("int16"): 8, np.dtype("uint16"): 9, np.dtype("uint32"): 10, np.dtype("uint64"): 11,
}

# The constants of the original graph (`bort/bort.py`'s presets and GluonNLP 0.8.3's BERT blocks).
ORIGINAL_LAYER_NORM_EPS = 1e-5  # every encoder LayerNorm ('layer_norm_eps' of both presets; not overridable)
ORIGINAL_DECODER_LAYER_NORM_EPS = 1e-12  # the MLM decoder's BERTLayerNorm default in GluonNLP 0.8.3
# The original's `predefined_borts`: model_name → (num_layers, units, hidden_size, num_heads, max_length).
ORIGINAL_PRESETS = {
    "bort_4_8_768_1024": (4, 1024, 768, 8, 512),
    "bort_2_16_512_1024": (2, 1024, 512, 16, 512),
}
# Why a mechanism other than dense attention has no counterpart in the original ('multi_head' only).
_MECHANISM_KINDS = {
    "dam_s": "a DAM learned attention mask", "dam_u": "a DAM learned attention mask",
    "fixed_mask": "a fixed (binarised DAM) attention mask",
    "yoso": "YOSO hashing attention", "yoso_e": "YOSO hashing attention",
}
_PER_LAYER = (  # (GluonNLP name inside `encoder.transformer_cells.i`, ours inside `encoder.layer.i`)
    ("attention_cell.proj_query.weight", "attention.self.query.weight"),
    ("attention_cell.proj_query.bias", "attention.self.query.bias"),
    ("attention_cell.proj_key.weight", "attention.self.key.weight"),
    ("attention_cell.proj_key.bias", "attention.self.key.bias"),
    ("attention_cell.proj_value.weight", "attention.self.value.weight"),
    ("attention_cell.proj_value.bias", "attention.self.value.bias"),
    ("proj.weight", "attention.output.dense.weight"),
    ("proj.bias", "attention.output.dense.bias"),
    ("ffn.ffn_1.weight", "intermediate.dense.weight"),
    ("ffn.ffn_1.bias", "intermediate.dense.bias"),
    ("ffn.ffn_2.weight", "output.dense.weight"),
    ("ffn.ffn_2.bias", "output.dense.bias"),
    ("ffn.layer_norm.gamma", "output.LayerNorm.weight"),
    ("ffn.layer_norm.beta", "output.LayerNorm.bias"),
    ("layer_norm.gamma", "attention.output.LayerNorm.weight"),
    ("layer_norm.beta", "attention.output.LayerNorm.bias"),
)


# --- the file format ----------------------------------------------------------------------------------------
def _array_header(array: np.ndarray, name: str, path: str) -> bytes:
    flag = TYPE_FLAGS.get(array.dtype.newbyteorder("="))
    if flag is None:
        raise CheckpointError(f"{path}: array {name!r} has dtype {array.dtype}, which MXNet cannot save; "
                              f"expected one of {', '.join(str(d) for d in TYPE_FLAGS)}")
    if array.ndim == 0:  # MXNet 1.x's V2 layout reads ndim 0 as "no data": a scalar would be lost
        raise CheckpointError(f"{path}: array {name!r} is a 0-d scalar, which MXNet 1.x saves as an empty "
                              "array; reshape it to (1,)")
    return (struct.pack("<Iii", V2_MAGIC, DENSE_STORAGE, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape)
            + struct.pack("<iii", CPU_DEVICE, DEVICE_ID, flag))


def _write_list(stream: BinaryIO, arrays: list[tuple[str, np.ndarray, bytes]]) -> None:
    stream.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays)))
    for _, array, header in arrays:
        stream.write(header)
        # Straight from the array's buffer: a 200 MB embedding is not copied again.
        stream.write(memoryview(array).cast("B"))
    stream.write(struct.pack("<Q", len(arrays)))
    for name, _, _ in arrays:
        raw = name.encode("utf-8")
        stream.write(struct.pack("<Q", len(raw)) + raw)


def write_params(path: str | os.PathLike, arrays: Mapping[str, np.ndarray | torch.Tensor]) -> Path:
    """Write named dense arrays as an MXNet NDArray file, in the mapping's order, atomically.

    Byte for byte what MXNet 1.x's `mx.nd.save(path, arrays)` writes (V2 layout, cpu context). Torch tensors
    are taken as their numpy values; every array is checked (dtype MXNet knows, at least one dimension)
    before the file is created, so a refused mapping leaves nothing behind. Returns `path`.
    """
    label = os.fspath(path)
    prepared = []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{label}: array name {name!r} is not a string")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        header = _array_header(array, name, label)
        # MXNet's files are little-endian C order whatever the machine.
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        prepared.append((name, array, header))
    dest = Path(path)
    with atomic_path(dest) as tmp, open(tmp, "wb") as stream:
        _write_list(stream, prepared)
    return dest


# --- our models in the original's layout --------------------------------------------------------------------
def original_preset(config) -> str | None:
    """The original `predefined_borts` name (`get_bort_model`'s model_name) with these sizes, or None: the
    original code builds only its presets, so a model of other sizes needs an entry of its own there."""
    sizes = (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
             config.max_position_embeddings)
    return next((name for name, preset in ORIGINAL_PRESETS.items() if preset == sizes), None)


def _kind(model: nn.Module) -> str:
    """"encoder", "mlm" or "classifier" (also regression): which original model `model` becomes."""
    from ..model import BortForMaskedLM, BortForMultipleChoice, BortForSequenceClassification, BortModel

    if isinstance(model, BortForMaskedLM):
        return "mlm"
    if isinstance(model, BortForSequenceClassification):
        return "classifier"
    if isinstance(model, BortModel):
        return "encoder"
    if isinstance(model, BortForMultipleChoice):
        raise CheckpointError(
            "cannot export a multiple-choice model to a Gluon .params file: the original Bort has no per-choice "
            "scorer (its RACE model is a 4-way BortClassifier over one sequence); export the encoder "
            "(--task encoder) or use the native format")
    raise CheckpointError(f"cannot export a {type(model).__name__} to a Gluon .params file; expected BortModel, "
                          "BortForMaskedLM or BortForSequenceClassification")


def gluon_export_problems(model: nn.Module) -> list[str]:
    """Why the original Bort graph cannot compute what `model` computes (empty when it can).

    The original is GluonNLP's post-LN BERT encoder with dense multi-head attention, GELU (erf), LayerNorm eps
    1e-5, positions from 0, no token types and no pooler, and a decoder tied to the word embedding (ours
    always is). Dropout placement (`embedding_style`) and dropout rates are not weights and do not matter.
    """
    config = model.config
    kind = _kind(model)
    problems = []
    if config.attention != "dense":
        what = _MECHANISM_KINDS.get(config.attention, "a sparse attention pattern")
        problems.append(f"attention {config.attention!r} is {what}, which the original Bort cannot represent "
                        "(it has only dense multi-head attention)")
    if config.layer_norm_position != "post":
        problems.append(f"layer_norm_position {config.layer_norm_position!r}: the original Bort is post-LN")
    if config.type_vocab_size:
        problems.append(f"type_vocab_size {config.type_vocab_size}: the original Bort has no token-type "
                        "embedding")
    if config.position_offset:
        problems.append(f"position_offset {config.position_offset}: the original Bort numbers positions from 0")
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act {config.hidden_act!r}: the original Bort uses GELU (erf)")
    if config.layer_norm_eps != ORIGINAL_LAYER_NORM_EPS:
        problems.append(f"layer_norm_eps {config.layer_norm_eps:g}: the original Bort's encoder LayerNorms use "
                        f"{ORIGINAL_LAYER_NORM_EPS:g}")
    encoder = model if kind == "encoder" else model.bort
    pooled_head = kind == "classifier" and model.use_pooler
    if encoder.pooler is not None and not pooled_head:
        problems.append("the model has a pooler, which the original BortModel lacks (its weights would be lost)")
    return problems


def gluon_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s weights under the original's names, in the order the original's `save_parameters` writes
    them. Raises CheckpointError with every reason the original graph cannot compute the same function."""
    problems = gluon_export_problems(model)
    if problems:
        raise CheckpointError(f"cannot export {type(model).__name__} to a Gluon .params file: "
                              + "; ".join(problems))
    kind = _kind(model)
    encoder = model if kind == "encoder" else model.bort
    ours = encoder.state_dict()
    prefix = "bort." if kind == "classifier" else ""
    state = {
        f"{prefix}encoder.position_weight": ours["embeddings.position_embeddings.weight"],
        f"{prefix}encoder.layer_norm.gamma": ours["embeddings.LayerNorm.weight"],
        f"{prefix}encoder.layer_norm.beta": ours["embeddings.LayerNorm.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        for theirs, own in _PER_LAYER:
            state[f"{prefix}encoder.transformer_cells.{i}.{theirs}"] = ours[f"encoder.layer.{i}.{own}"]
    state[f"{prefix}word_embed.0.weight"] = ours["embeddings.word_embeddings.weight"]
    if kind == "mlm":
        head = model.lm_head
        if head.layer_norm.eps != ORIGINAL_DECODER_LAYER_NORM_EPS:
            logger.warning("the MLM decoder's LayerNorm eps is %g here and %g in the original (GluonNLP 0.8.3): "
                           "the exported model's MLM logits will differ slightly", head.layer_norm.eps,
                           ORIGINAL_DECODER_LAYER_NORM_EPS)
        state.update({
            "decoder.0.weight": head.dense.weight, "decoder.0.bias": head.dense.bias,
            "decoder.2.gamma": head.layer_norm.weight, "decoder.2.beta": head.layer_norm.bias,
            # Tied: the original saves the shared parameter under both names and requires both on load.
            "decoder.3.weight": ours["embeddings.word_embeddings.weight"], "decoder.3.bias": head.bias,
        })
    elif kind == "classifier":
        # BortClassifier: Dropout, Dense(units, tanh), Dropout, Dense(num_classes). Our Bort head is the same
        # graph; a BERT-layout head (pooler → dropout → Linear) is too, with the pooler as the first Dense.
        first, last = (encoder.pooler.dense, model.classifier) if model.use_pooler else \
            (model.classifier.dense, model.classifier.out_proj)
        state.update({"classifier.1.weight": first.weight, "classifier.1.bias": first.bias,
                      "classifier.3.weight": last.weight, "classifier.3.bias": last.bias})
    # float32 as the original trains and loads it; widening from half precision is exact.
    return {name: tensor.detach().to(torch.float32) for name, tensor in state.items()}


def export_gluon(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` as a Gluon `.params` file the original Bort code loads with `load_parameters`
    (strictly: no allow_missing / ignore_extra), atomically. A BortModel or BortForMaskedLM is
    `get_bort_model(model_name, ..., use_decoder=<has MLM head>)`'s net; a BortForSequenceClassification
    (classification or regression) is `BortClassifier(bort, num_classes=num_labels)`. Refused, with nothing
    written, when the file name does not end in `.params` or the original cannot compute the same function.
    """
    dest = Path(path)
    if dest.suffix != ".params":
        raise CheckpointError(f"{dest}: a Gluon checkpoint's file name must end in .params (that is how it is "
                              "recognised when read back)")
    if dest.is_dir():
        raise CheckpointError(f"{dest}: is a directory; expected a .params file name")
    state = gluon_state(model)
    return write_params(dest, state)
