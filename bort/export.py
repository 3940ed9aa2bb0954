"""Serving export: a model as an ONNX file (run by ONNX Runtime) or a `torch.export` program (`.pt2`).

Both take `input_ids` and `attention_mask` (and `token_type_ids` when the model has token types) with
dynamic batch and sequence axes (and choices, for multiple choice), and return the head's `logits` (the
encoder: `last_hidden_state`, and `pooler_output` when it has a pooler).

Every export is checked before it is kept: the written file is loaded back (ONNX Runtime for ONNX,
`torch.export.load` for pt2) and run on a padded batch of another shape than the example it was recorded
on, against the eager model; a graph that disagrees is refused. The file is written in a temporary directory
beside the destination and renamed over it at the end, so a refused or failed export leaves nothing.

Precision options:
- `quantize="int8"`: ONNX Runtime's dynamic quantization (`onnxruntime.quantization.quantize_dynamic`, int8
  weights per output channel, activations quantized per call) for ONNX (per tensor, a MiniLM fine-tuned on
  SST-2 lost 1.8 points on 272 held-out rows; per channel it is within 0.4 of fp32, at the same speed); torchao's int8 dynamic quantization
  (`Int8DynamicActivationInt8WeightConfig`) for pt2 and for eager PyTorch (`quantize_int8`). Loading such a
  pt2 program needs `import torchao` first (its tensor subclasses live there).
- `dtype="bf16"`: the model cast to bfloat16 (pt2 only: ONNX Runtime's CPU provider has no bfloat16 kernels
  for the encoder's operators, so an ONNX bf16 export is refused with that reason).

Attention mechanisms that cannot become a static graph are refused before anything is written (`REFUSED`):
their forward draws random numbers per call, runs numpy or worker threads inside a custom
`torch.autograd.Function`, or branches in Python on the data. The optional packages come with `bort[serve]`.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .atomic import raise_write_error


FORMATS = ("onnx", "pt2")
QUANTIZATIONS = ("int8",)
DTYPES = ("fp32", "bf16")
SERVE_EXTRA = "pip install 'bort[serve]'"

# Mechanism name → why it cannot be exported. Checked before any work, so nothing is written.
_LSH_REASON = ("it runs inside a custom torch.autograd.Function (`yoso_lsh`) that sorts buckets with numpy on "
               "worker threads and splits its work by values read from the data; no exported graph can hold "
               "that")
_PATTERN_REASON = ("its masked path branches in Python on the data (whether a query row has any allowed key, "
                   "`masked_attention`) and builds its pattern per sequence length in Python, and its "
                   "block-sparse path is a custom torch.autograd.Function on worker threads; a graph with a "
                   "dynamic sequence axis can hold none of these")
REFUSED: dict[str, str] = {
    "yoso": "YOSO's sampled path draws fresh random hash planes on every call, and " + _LSH_REASON,
    "yoso_e": "YOSO-E " + _LSH_REASON,
    "dam_s": ("a DAM search mask samples Gumbel noise while training, runs custom torch.autograd.Functions and "
              "is not a fixed graph (`bort mask export` binarises it into a fixed_mask checkpoint, which serves "
              "from eager PyTorch but does not export either)"),
    "fixed_mask": "the fixed-mask mechanism: " + _PATTERN_REASON,
}
REFUSED["dam_u"] = REFUSED["dam_s"]
REFUSED.update({pattern: f"the {pattern!r} sparse pattern: " + _PATTERN_REASON
                for pattern in ("strided", "fixed", "longformer", "logsparse", "bigbird", "star")})

# Verification tolerance on |exported − eager|, absolute plus relative to the largest eager output.
_TOLERANCE = {"fp32": (1e-4, 1e-4), "bf16": (2e-2, 2e-2), "int8": (1e-3, 1e-3)}


class ExportError(ValueError):
    """A model that cannot be exported as asked (the reason is in the message); nothing was written."""


@dataclass
class ExportReport:
    """What `export_model` wrote and how far the exported graph is from eager PyTorch."""

    dest: str
    format: str
    dtype: str
    quantize: str | None
    inputs: list[str]
    outputs: list[str]
    example_shape: list[int]
    verify_shape: list[int]
    max_abs_diff: float
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ServingModule(nn.Module):
    """A model's forward with tensor inputs and a tuple of tensor outputs, as exporters need."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.token_types = model.config.type_vocab_size > 0
        self.output_names = _output_names(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask, token_type_ids)
        return tuple(getattr(out, name) for name in self.output_names)


def _output_names(model: nn.Module) -> list[str]:
    from .model import BortModel

    if isinstance(model, BortModel):
        return ["last_hidden_state"] + (["pooler_output"] if model.pooler is not None else [])
    return ["logits"]


def check_exportable(model: nn.Module) -> None:
    """Raise ExportError with the reason when the model's attention mechanism cannot be exported."""
    config = getattr(model, "config", None)
    if config is None:
        raise ExportError(f"cannot export a {type(model).__name__}: expected a bort model (with a .config)")
    reason = REFUSED.get(config.attention)
    if reason is not None:
        raise ExportError(f"attention mechanism {config.attention!r} cannot be exported: {reason}")


def _is_multiple_choice(model: nn.Module) -> bool:
    from .model import BortForMultipleChoice

    return isinstance(model, BortForMultipleChoice)


def _batch(model: nn.Module, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Example inputs with padding: every row but the first ends in padding of a different length (multiple
    choice: `batch` choices per example, so that the choices axis changes with the batch too)."""
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    lead = (batch, batch) if _is_multiple_choice(model) else (batch,)
    ids = torch.randint(0, config.vocab_size, (*lead, length), generator=gen)
    mask = torch.ones_like(ids)
    rows = mask.view(-1, length)
    for row in range(1, rows.shape[0]):
        rows[row, max(1, length - row):] = 0
    inputs: tuple[torch.Tensor, ...] = (ids, mask)
    if config.type_vocab_size > 0:
        types = torch.zeros_like(ids)
        types[..., length // 2:] = config.type_vocab_size - 1
        inputs = inputs + (types,)
    return inputs


def _input_names(model: nn.Module) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size > 0 else [])


def _dynamic_shapes(model: nn.Module) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", max=1 << 20)
    seq = torch.export.Dim("seq", max=model.config.max_sequence_length)
    if _is_multiple_choice(model):
        axes: dict[int, Any] = {0: batch, 1: torch.export.Dim("choices", max=1 << 10), 2: seq}
    else:
        axes = {0: batch, 1: seq}
    return {name: axes for name in _input_names(model)}


def _import(module: str, what: str) -> Any:
    """Import an optional serving dependency, or say which extra brings it."""
    import importlib

    try:
        if module.startswith("torchao"):
            # torchao logs a warning for each CUDA-only kernel library it cannot load on a CPU machine.
            torchao_logger = logging.getLogger("torchao")
            level = torchao_logger.level
            torchao_logger.setLevel(logging.ERROR)
            try:
                return importlib.import_module(module)
            finally:
                torchao_logger.setLevel(level)
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"{what} needs the package {module.split('.')[0]!r} ({err}); install it with "
                          f"{SERVE_EXTRA}") from None


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with its Linear layers in torchao's int8 dynamic quantization (int8 weights, int8
    activations quantized per token at run time): the maintained successor of `torch.ao.quantization`'s
    dynamic quantization, for eager PyTorch on CPU."""
    quant = _import("torchao.quantization", "int8 quantization for PyTorch")
    quantized = copy.deepcopy(model).eval()
    quant.quantize_(quantized, quant.Int8DynamicActivationInt8WeightConfig())
    return quantized


def _check_options(fmt: str, quantize: str | None, dtype: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)} (or none)")
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if quantize is not None and dtype != "fp32":
        raise ExportError(f"quantize {quantize} with dtype {dtype}: choose one (int8 quantization starts from the "
                          "fp32 weights)")
    if fmt == "onnx" and dtype == "bf16":
        raise ExportError("dtype bf16 with format onnx: ONNX Runtime's CPU execution provider has no bfloat16 "
                          "kernels for the encoder's operators (Add, MatMul, LayerNormalization); export bf16 "
                          "as pt2, or ONNX as fp32 or int8")


def _max_diff(got: list[torch.Tensor], want: tuple[torch.Tensor, ...], names: list[str]) -> float:
    if len(got) != len(want):
        raise ExportError(f"the exported graph returns {len(got)} outputs, expected {len(want)} ({', '.join(names)})")
    diff = 0.0
    for name, g, w in zip(names, got, want):
        if tuple(g.shape) != tuple(w.shape):
            raise ExportError(f"the exported graph's {name} has shape {tuple(g.shape)} on the check batch, eager "
                              f"{tuple(w.shape)}")
        diff = max(diff, (g.float() - w.float()).abs().max().item())
    return diff


def _export_onnx(module: ServingModule, example: tuple[torch.Tensor, ...], names: list[str],
                 shapes: dict[str, Any], path: Path) -> None:
    _import("onnxscript", "ONNX export")
    import warnings

    with warnings.catch_warnings():
        # The exporter warns that `dynamic_shapes` names inputs while `input_names` renames them: intended.
        warnings.simplefilter("ignore", UserWarning)
        program = torch.onnx.export(module, example, dynamo=True, input_names=names,
                                    output_names=module.output_names, dynamic_shapes=shapes, verbose=False)
    program.save(str(path))


def _run_onnx(path: Path, names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    ort = _import("onnxruntime", "running an ONNX export")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    except Exception as err:  # ONNX Runtime raises its own exception types (Fail, NotImplemented, …)
        raise ExportError(f"ONNX Runtime cannot run the exported graph: {err}") from None
    return [torch.from_numpy(o) for o in outputs]


def export_model(model: nn.Module, dest: str | os.PathLike, fmt: str, *, quantize: str | None = None,
                 dtype: str = "fp32", example_batch: int = 2, example_length: int = 16) -> ExportReport:
    """Export `model` (a bort encoder or task model) to `dest` as ONNX or a torch.export program, check it
    against eager PyTorch on a padded batch of another shape, and rename it into place (see the module doc).

    Raises ExportError (nothing written) for a mechanism that cannot be exported, an option combination
    that cannot run, a missing serving package, or an exported graph that disagrees with eager."""
    _check_options(fmt, quantize, dtype)
    check_exportable(model)
    dest = Path(dest)
    if dest.is_dir():
        raise ExportError(f"{dest}: is a directory; expected the path of the {fmt} file to write")
    max_len = model.config.max_sequence_length
    length = max(2, min(example_length, max_len - 1))
    names = _input_names(model)
    example = _batch(model, example_batch, length, seed=0)
    # The check batch differs from the example in every dynamic axis, and is padded.
    check = _batch(model, example_batch + 1, min(length + 5, max_len), seed=1)

    model = copy.deepcopy(model).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    reference = f"eager {dtype}"
    if quantize == "int8" and fmt == "pt2":
        model = quantize_int8(model)
        reference = "eager torchao int8"
    elif quantize == "int8":
        reference = "eager fp32 (ONNX Runtime int8 differs by quantization error)"
    module = ServingModule(model).eval()
    shapes = _dynamic_shapes(model)
    with torch.no_grad():
        want = module(*check)

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp_dir:
            tmp = Path(tmp_dir) / f"model.{fmt}"
            try:
                with torch.no_grad():
                    if fmt == "onnx":
                        _export_onnx(module, example, names, shapes, tmp)
                        if quantize == "int8":
                            ort_quant = _import("onnxruntime.quantization", "int8 ONNX quantization")
                            fp32 = tmp.with_name("model.fp32.onnx")
                            tmp.rename(fp32)
                            ort_quant.quantize_dynamic(str(fp32), str(tmp), weight_type=ort_quant.QuantType.QInt8,
                                                     per_channel=True)
                    else:
                        program = torch.export.export(module, example, dynamic_shapes=shapes)
                        torch.export.save(program, str(tmp))
            except ExportError:
                raise
            except Exception as err:  # the exporters' own failures (unsupported operator, data-dependent guard, …)
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ExportError(f"attention mechanism {model.config.attention!r}: the {fmt} exporter failed: "
                                  f"{type(err).__name__}: {first}") from err
            if fmt == "onnx":
                got = _run_onnx(tmp, names, check)
            else:
                with torch.no_grad():
                    got = list(torch.export.load(str(tmp)).module()(*check))
            diff = _max_diff(got, want, module.output_names)
            # ONNX Runtime's int8 is compared with fp32 eager: its distance is quantization error, reported
            # (max_abs_diff), not a fault; every other export must reproduce its eager reference.
            if not (fmt == "onnx" and quantize == "int8"):
                atol, rtol = _TOLERANCE[quantize or dtype]
                allowed = atol + rtol * max(w.float().abs().max().item() for w in want)
                if not diff <= allowed:  # also catches NaN
                    raise ExportError(f"the exported {fmt} graph differs from eager PyTorch by {diff:.3g} on a "
                                      f"padded {tuple(check[0].shape)} batch (allowed {allowed:.3g}); not written")
            elif diff != diff:
                raise ExportError("the int8 ONNX graph returns NaN on a padded check batch; not written")
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, dest)
    except OSError as err:
        raise_write_error(err, dest, f"writing the {fmt} export")
        raise
    return ExportReport(dest=str(dest), format=fmt, dtype=dtype, quantize=quantize, inputs=names,
                        outputs=module.output_names, example_shape=list(example[0].shape),
                        verify_shape=list(check[0].shape), max_abs_diff=diff, reference=reference)
