"""`bort predict`: a fine-tuned checkpoint on a task's dev or test file, from text to leaderboard file.

    bort predict out/best --task SST-2 --data-dir glue_data --split test --precision int8 --backend onnxruntime

The rows are read by the task readers (`bort.data.tasks`), tokenized with the tokenizer saved beside the model,
sorted by length and batched so that each batch is padded only to its own longest row; the predictions are put
back in file order and written in the task's leaderboard format (`Task.write_submission`), with the official
metrics when the split has labels. Rows longer than the model's positions are truncated (longest-first for
pairs) and counted in the summary and on stderr.

Precision and backend (`Predictor`):
- torch fp32: eager PyTorch; bf16: the model cast to bfloat16; int8: torchao's dynamic int8 quantization
  (`bort.export.quantize_int8`).
- onnxruntime: the model exported to a temporary ONNX file by `bort.export.export_model` (checked against eager
  there; int8 = ONNX Runtime's dynamic quantization) and run by an `InferenceSession` (bf16 is refused: ONNX
  Runtime's CPU provider has no bfloat16 kernels for the encoder).

The model/tokenizer pair is checked before anything runs: a tokenizer whose ids do not fit the model's
embedding is refused, and so is a checkpoint without the head the task needs.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime")
DEFAULT_THREADS = 2


class PredictError(ValueError):
    """A prediction run that cannot go ahead as asked (the reason is in the message); nothing was written."""


@dataclass
class Prediction:
    """Predictions in the order of the examples given, plus what the run did to get them."""

    predictions: list[int | float]
    truncated: int
    max_positions: int
    seconds: float
    truncated_rows: list[str] = field(default_factory=list)  # guids of the truncated rows, in file order

    @property
    def sentences_per_second(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else float("inf")


class Predictor:
    """A task model in one precision on one backend: `predict(examples)` tokenizes, batches by length, runs
    the model and returns the predictions in the examples' order (see the module doc)."""

    def __init__(self, model: nn.Module, tokenizer: Any, kind: str, *, precision: str = "fp32",
                 backend: str = "torch", batch_size: int = 32, threads: int | None = None,
                 source: str = "model") -> None:
        if precision not in PRECISIONS:
            raise PredictError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if backend not in BACKENDS:
            raise PredictError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise PredictError(f"batch size {batch_size!r}: expected a positive integer")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise PredictError(f"threads {threads!r}: expected a positive integer")
        check_vocabulary(model.config, tokenizer, source)
        self.tokenizer = tokenizer
        self.kind = kind
        self.precision = precision
        self.backend = backend
        self.batch_size = batch_size
        self.threads = threads
        self.config = model.config
        self.max_positions = model.config.max_sequence_length
        self.token_types = model.config.type_vocab_size > 0
        if backend == "onnxruntime":
            if kind == "multiple_choice":
                raise PredictError("multiple-choice tasks run on the torch backend only: their choices are scored "
                                   "from a flattened batch that the exported (batch, choices, seq) graph does not "
                                   "take; pass --backend torch")
            self._session = _onnx_session(model, precision, threads or DEFAULT_THREADS)
            self._model = None
        else:
            if threads is not None:
                torch.set_num_threads(threads)
            model = model.eval()
            if precision == "int8":
                from .export import quantize_int8

                model = quantize_int8(model)
            elif precision == "bf16":  # a copy: Module.to casts in place, and the caller's model stays fp32
                model = copy.deepcopy(model).to(torch.bfloat16)
            self._model = model
            self._session = None

    # -------------------------------------------------------------------------------------------- encoding
    def encode(self, examples: Sequence[Any]) -> tuple[list[Any], list[str]]:
        """Encoded examples (`bort.finetune.batching.EncodedExample`) and the guids of those truncated to the
        model's positions."""
        from .finetune.batching import encode_task_examples

        # Encoded in full first, so that a row over the limit is known (and counted) rather than cut silently.
        items = encode_task_examples(self.tokenizer, examples, 1 << 30)
        truncated = [i for i, item in enumerate(items) if item.length > self.max_positions]
        if truncated:
            cut = encode_task_examples(self.tokenizer, [examples[i] for i in truncated], self.max_positions)
            for i, item in zip(truncated, cut):
                items[i] = item
        return items, [examples[i].guid for i in truncated]

    # -------------------------------------------------------------------------------------------- running
    @torch.no_grad()
    def predict(self, examples: Sequence[Any], progress: bool = False) -> Prediction:
        """Predictions for `examples` in their order; the time counts tokenization, batching and the model."""
        from .finetune.batching import collate, eval_batches
        from .finetune.heads import predictions

        start = time.perf_counter()
        items, truncated = self.encode(examples)
        out: list[int | float | None] = [None] * len(items)
        batches = eval_batches(items, self.batch_size)  # length-sorted: each padded to its own longest row
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="predict", unit="batch", file=sys.stderr)
        pad_id = self.tokenizer.pad_token_id
        for idx in batches:
            batch = collate([items[i] for i in idx], pad_id, self.kind)
            for i, p in zip(idx, predictions(self._scores(batch), self.kind)):
                out[i] = p
        return Prediction(out, len(truncated), self.max_positions, time.perf_counter() - start,  # type: ignore[arg-type]
                          truncated)

    def _scores(self, batch: Any) -> torch.Tensor:
        if self._session is not None:
            feed = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
            if self.token_types:
                feed["token_type_ids"] = batch.token_type_ids.numpy()
            logits = torch.from_numpy(self._session.run(None, feed)[0])
            return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        from .finetune.heads import scores

        return scores(self._model, batch).float()


def check_vocabulary(config: Any, tokenizer: Any, source: str) -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding (another model's vocabulary)."""
    if tokenizer.vocab_size > config.vocab_size:
        raise PredictError(f"{source}: the tokenizer has {tokenizer.vocab_size} ids but the model embeds "
                           f"{config.vocab_size}: they do not belong together (pass --tokenizer with the "
                           "vocabulary the model was trained with)")


def _onnx_session(model: nn.Module, precision: str, threads: int) -> Any:
    """An ONNX Runtime session on the model exported (and checked) by `bort.export`, from a temporary file."""
    from .export import ExportError, _import, export_model

    if precision == "bf16":
        raise PredictError("precision bf16 with backend onnxruntime: ONNX Runtime's CPU execution provider has no "
                           "bfloat16 kernels for the encoder's operators; use --backend torch for bf16")
    ort = _import("onnxruntime", "the onnxruntime backend")
    with tempfile.TemporaryDirectory(prefix="bort-predict-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            export_model(model, path, "onnx", quantize="int8" if precision == "int8" else None)
        except ExportError as err:
            raise PredictError(f"cannot run on onnxruntime: {err}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The session holds the graph in memory once built, so the temporary file can go.
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_task_model(model_path: str, task: Any) -> nn.Module:
    """The fine-tuned model at `model_path` with the head `task` needs; refused (PredictError) when the
    checkpoint has no such head (an encoder or MLM checkpoint would predict with random head weights)."""
    from .checkpoint import checkpoint_task, model_for_task, read_checkpoint

    cfg, state, saved = read_checkpoint(model_path)
    head = saved or checkpoint_task(state)
    compatible = {"classification": ("classification",), "regression": ("regression", "classification"),
                  "multiple_choice": ("multiple_choice",)}[task.kind]
    if head not in compatible:
        raise PredictError(f"{model_path}: the checkpoint holds {'an encoder' if head is None else f'a {head} model'}"
                           f", but {task.name} needs a fine-tuned {task.kind} head; fine-tune it first "
                           "(run_finetune.py writes one to OUTPUT/best)")
    if task.kind == "classification" and cfg.num_labels != len(task.labels):
        raise PredictError(f"{model_path}: the classifier has {cfg.num_labels} labels, {task.name} has "
                           f"{len(task.labels)} ({', '.join(task.labels)})")
    if task.kind == "regression" and cfg.num_labels != 1:
        raise PredictError(f"{model_path}: a regression task needs one output; the classifier has {cfg.num_labels}")
    return model_for_task(cfg, state, task.kind, str(model_path), strict_heads=True)


def predict_task(model: str, task_name: str, data_dir: str, split: str = "dev", *, precision: str = "fp32",
                 backend: str = "torch", batch_size: int = 32, threads: int | None = DEFAULT_THREADS,
                 tokenizer: str | None = None, output_dir: str | None = None, skip_bad_rows: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Predict `split` of the task with the checkpoint `model`; write the leaderboard file (when `output_dir`)
    and return the summary (metrics when the split has labels, truncated rows, sentences/s)."""
    from .data.tasks import get_task
    from .finetune.runner import resolve_task_dir
    from .tokenization import load_tokenizer

    task = get_task(task_name)
    task.check_split(split)
    task_dir = resolve_task_dir(task, data_dir)
    source = tokenizer or model
    try:
        tok = load_tokenizer(source)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise PredictError(f"no tokenizer in {source!r} ({err}); pass --tokenizer with a vocabulary file or a "
                           "directory holding one") from None
    net = load_task_model(model, task)
    check_vocabulary(net.config, tok, str(source))  # before reading the data or building the backend
    examples = task.read(task_dir, split, skip_bad_rows=skip_bad_rows)
    predictor = Predictor(net, tok, task.kind, precision=precision, backend=backend, batch_size=batch_size,
                          threads=threads, source=str(source))
    result = predictor.predict(examples, progress=progress)
    summary: dict[str, Any] = {
        "task": task.name, "split": split, "model": str(model), "examples": len(examples),
        "precision": precision, "backend": backend, "batch_size": batch_size, "threads": threads,
        "truncated": result.truncated, "max_positions": result.max_positions,
        "bad_rows": len(getattr(examples, "bad_rows", [])),
        "seconds": round(result.seconds, 4), "sentences_per_second": round(result.sentences_per_second, 2),
        "metrics": None, "submission": None,
    }
    if all(ex.label is not None for ex in examples):
        summary["metrics"] = {k: float(v) for k, v in task.evaluate(result.predictions, examples).items()}
    if output_dir is not None:
        summary["submission"] = str(task.write_submission(result.predictions, examples, output_dir))
    summary["predictions"] = result.predictions
    summary["truncated_rows"] = result.truncated_rows
    return summary


# --- reporting (`bort predict`, `run_finetune.py --only_inference`) ----------------------------------------
def report(summary: dict[str, Any]) -> None:
    """The truncation notice on stderr, then the summary as one JSON line (without the predictions)."""
    if summary["truncated"]:
        shown = ", ".join(summary["truncated_rows"][:5])
        more = f" and {summary['truncated'] - 5} more" if summary["truncated"] > 5 else ""
        print(f"bort predict: {summary['truncated']} of {summary['examples']} rows were longer than the model's "
              f"{summary['max_positions']} positions and were truncated ({shown}{more})", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("predictions", "truncated_rows")}))
