"""`bort <command>`: the command-line entry point for the whole suite.

Each command's code lives with the library part it runs; this file only wires the sub-commands."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from .config import BortConfig
    from .tokenization import BortTokenizer


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint (native, Hugging Face, Gluon .params) to native, HF "
                                       "or Gluon .params",
                       description="Read any supported checkpoint and write it as a native bort directory "
                                   "(config.json + model.safetensors), a Hugging Face directory, or a Gluon "
                                   ".params file that the original Bort code loads.")
    p.add_argument("src", help="checkpoint directory or Gluon .params file")
    p.add_argument("dest", help="output directory (native, hf) or file ending in .params (gluon)")
    p.add_argument("--to", choices=("native", "hf", "gluon"), default=None,
                   help="output format (default: gluon when DEST ends in .params, else native)")
    p.add_argument("--config", default=None,
                   help="preset name or JSON file (required meaning for .params files; default: sizes inferred "
                        "from the shapes with the bort_4_8_768_1024 preset's other settings)")
    p.add_argument("--task", default="auto", choices=("auto", "encoder", "mlm", "classification", "regression",
                                                      "multiple_choice"),
                   help="which model to write (default: the head the checkpoint has)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_task, model_for_task, read_checkpoint, save_pretrained

    cfg, state, saved = read_checkpoint(args.src, args.config)
    task = (saved or checkpoint_task(state)) if args.task == "auto" else args.task
    task = None if task == "encoder" else task
    fmt = args.to or ("gluon" if str(args.dest).endswith(".params") else "native")
    model = model_for_task(cfg, state, task, str(args.src))
    tokenizer = _source_tokenizer(args.src, cfg) if fmt != "gluon" else None  # checked before anything is written
    out = save_pretrained(model, args.dest, format=fmt)
    if tokenizer is not None:  # in HF's files too, so AutoTokenizer on the output gives our ids
        tokenizer.save(out, model_max_length=cfg.max_position_embeddings - cfg.position_offset)
    n = sum(p.numel() for p in model.parameters())
    report = {"src": str(args.src), "dest": str(out), "format": fmt, "task": task or "encoder", "parameters": n,
              "tokenizer": tokenizer.hf_tokenizer_class() if tokenizer is not None else None}
    if fmt == "gluon":  # the model_name the original's get_bort_model needs (None: add a preset of these sizes)
        from .checkpoint.gluon_export import original_preset

        report["original_preset"] = original_preset(cfg)
    print(json.dumps(report))
    return 0


def _source_tokenizer(src: str, cfg: BortConfig) -> BortTokenizer | None:
    """The tokenizer saved beside the checkpoint `src` (an HF or native directory, a fine-tuning best/), or
    None; refused when its ids do not fit the model's embedding."""
    from .checkpoint import CheckpointError
    from .tokenization import tokenizer_in

    try:
        tokenizer = tokenizer_in(src)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{src}: cannot read the tokenizer beside the checkpoint: {err}") from None
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{src}: the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                              f"{cfg.vocab_size}: they do not belong together")
    return tokenizer


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets, or print one as JSON")
    p.add_argument("name", nargs="?", help="a preset to print")
    p.set_defaults(func=_run_presets)


def _run_presets(args: argparse.Namespace) -> int:
    from .config import BortConfig

    if args.name:
        print(BortConfig.preset(args.name).to_json_string(), end="")
    else:
        print("\n".join(BortConfig.presets()))
    return 0


# Commands whose code lives in another module: (name, module, add-arguments function, run function, help).
# Modules are imported only when the parser is built, so `bort --help` stays light.
DELEGATED = [
    ("demo", "demo", "add_demo_args", "run_demo",
     "load a real BERT, convert its checkpoint, build data and distil a Bort student from it"),
    ("train-tokenizer", "tokenization", "add_train_tokenizer_args", "run_train_tokenizer",
     "train a WordPiece or byte-level BPE vocabulary from text files"),
    ("tokenize", "tokenization", "add_tokenize_args", "run_tokenize",
     "print the token ids (or tokens) of a text with any supported vocabulary"),
    ("create-pretraining-data", "data.pretraining", "add_args", "run",
     "make pretraining shards (RecordIO) from text files"),
    ("distill", "distill.cli", "add_args", "run",
     "distil a student from a teacher on pretraining shards (torchrun/MPI aware)"),
    ("mask", "attention.mask_export", "add_args", "run",
     "learned attention masks: `mask export` binarises a DAM search into a fixed-mask checkpoint"),
    ("finetune", "finetune.cli", "add_args", "run",
     "fine-tune a checkpoint on a GLUE/SuperGLUE/RACE task (early stopping, submissions)"),
    ("grid", "finetune.cli", "add_grid_args", "run_grid_cli",
     "run a fine-tuning hyper-parameter grid (worker processes or Ray; resumable)"),
    ("agora", "finetune.cli", "add_agora_args", "run_agora_cli",
     "fine-tune with Agora: prune a hyper-parameter pool while adding reference-labelled points near errors"),
    ("lra", "lra.cli", "add_args", "run",
     "Long Range Arena: ListOps, Text, Retrieval, Image, Pathfinder with any attention; generators"),
    ("search", "search.cli", "add_args", "run",
     "FPTAS sub-architecture search over layers/heads/hidden/intermediate (size, speed, truncated-run error)"),
    ("fetch", "storage.cli", "add_fetch_args", "run_fetch",
     "download s3://BUCKET/KEY (or a prefix) with resume and checksum verification"),
    ("push", "storage.cli", "add_push_args", "run_push",
     "upload a file or directory to s3://BUCKET/PREFIX (multipart, .sha256 sidecars)"),
    ("export", "export", "add_args", "run",
     "export a model for serving: ONNX (ONNX Runtime) or torch.export (.pt2), optionally int8 or bf16"),
    ("predict", "predict", "add_args", "run",
     "predict a task's dev/test split with a fine-tuned model (fp32/bf16/int8, torch or ONNX Runtime)"),
]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert, _add_presets]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bort", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, add_args, run, help_text in DELEGATED:
        module = importlib.import_module(f".{module_name}", __package__)
        p = sub.add_parser(name, help=help_text)
        getattr(module, add_args)(p)
        p.set_defaults(func=getattr(module, run))
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; library errors become one clear line on stderr and exit status 2."""
    from .checkpoint import CheckpointError
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    # The program, not the library, decides the process's allocator: keep large freed blocks for reuse
    # (see bort.perf and README, "Performance notes"); BORT_NO_MALLOC_TUNING=1 opts out.
    from .perf import tune_allocator

    tune_allocator()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"bort {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
