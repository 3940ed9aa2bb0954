"""`bort <command>`: the command-line entry point for the whole suite.

One convention for every command. Its flags and its `run` live in the `cli.py` of the package that does the
work (`bort.distill.cli`, `bort.lra.cli`, `bort.data.cli`, …); the commands of the top-level modules (convert,
presets, train-tokenizer, tokenize, export, predict) live here. `COMMANDS` names each command's module, and
only the chosen command's module is imported, so `bort --help` and `bort presets` do not import torch.

Every parser goes through `conform`: `--help` shows each option's default, flags are spelled with dashes and
accept the underscore spelling too (`--input-file` and the original scripts' `--input_file`), and a user error
is one line `PROG: error: MESSAGE` with exit status 2, as argparse reports a usage error."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

if TYPE_CHECKING:
    from .config import BortConfig
    from .tokenization import BortTokenizer

# What a user can cause (bad input or settings, a missing file, an unwritable output): reported in one line. A
# command module adds its own in a `USER_ERRORS` tuple; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)


# =================================================================================================== conventions
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default; descriptions keep their line breaks (they hold examples).

    Not shown: a default of None (the help says what is computed instead), an empty list, and the default of
    an on/off flag (its name says it)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and shows_default(action):  # an option without help still shows its default
            action = argparse.Action(action.option_strings, action.dest, nargs=action.nargs,
                                     default=action.default, choices=action.choices, metavar=action.metavar,
                                     help="(default: %(default)s)")
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


def shows_default(action: argparse.Action) -> bool:
    """Whether `--help` states this option's default (see `HelpFormatter`)."""
    return (bool(action.option_strings) and action.nargs != 0 and action.default is not None
            and action.default is not argparse.SUPPRESS and action.default != [])


def _spelled(flag: str, old: str, new: str) -> str:
    return "--" + flag[2:].replace(old, new) if flag.startswith("--") else flag


def add_alias(parser: argparse.ArgumentParser, action: argparse.Action, *flags: str) -> None:
    """Let `flags` (an old or deprecated spelling) select `action` without listing them in `--help`."""
    for flag in flags:
        if parser._option_string_actions.get(flag, action) is not action:
            raise ValueError(f"{flag} already names another option of {parser.prog}")
        parser._option_string_actions[flag] = action


def add_no_progress(parser: Any, help: str = "no progress bar") -> argparse.Action:
    """The one progress switch, `--no-progress` (dest `progress`); `--quiet`, its old name, still works."""
    action = parser.add_argument("--no-progress", dest="progress", action="store_false", help=help)
    parser._option_string_actions.setdefault("--quiet", action)
    return action


def conform(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Apply the conventions to `parser` and its sub-parsers: defaults in `--help`; each flag shown with dashes
    and accepted with underscores as well (a flag whose dashed form names another option keeps its spelling)."""
    parser.formatter_class = HelpFormatter
    table = parser._option_string_actions
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                conform(sub)
            continue
        shown: list[str] = []
        for flag in action.option_strings:
            dashed = _spelled(flag, "_", "-")
            if table.setdefault(dashed, action) is not action:
                dashed = flag
            if dashed not in shown:
                shown.append(dashed)
            table.setdefault(_spelled(flag, "-", "_"), action)
        action.option_strings = shown
    return parser


def script_parser(prog: str | None, description: str | None,
                  add_args: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The parser of a root script (`run_finetune.py`, …): the same flags and conventions as its `bort` command."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_args(parser)
    return conform(parser)


def run_reporting(prog: str, run: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                  errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command; a user error becomes one line `PROG: error: MESSAGE` on stderr and exit status 2."""
    try:
        return int(run(args) or 0)
    except USER_ERRORS + tuple(errors) as err:
        return report_error(prog, err)


def report_error(prog: str, err: BaseException | str) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


# =================================================================================================== bort convert
def add_convert_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Read any supported checkpoint and write it as a native bort directory (config.json + "
                     "model.safetensors), a Hugging Face directory, or a Gluon .params file that the original "
                     "Bort code loads.")
    p.add_argument("src", help="checkpoint directory or Gluon .params file")
    p.add_argument("dest", help="output directory (native, hf) or file ending in .params (gluon)")
    p.add_argument("--to", choices=("native", "hf", "gluon"), default=None,
                   help="output format (default: gluon when DEST ends in .params, else native)")
    add_model_config(p, "required meaning for .params files; default: sizes inferred from the shapes with the "
                        "bort_4_8_768_1024 preset's other settings")
    add_task_choice(p, "which model to write")


def add_model_config(p: argparse.ArgumentParser, purpose: str) -> None:
    """`--model-config` (old name `--config`): the model config as a preset name, a JSON file or inline JSON;
    a JSON object may name a preset and override its fields ({"preset": NAME, ...}), in a file as inline."""
    action = p.add_argument("--model-config", dest="config", default=None, metavar="PRESET_OR_JSON",
                            help=f"preset name, JSON file or inline JSON ({purpose})")
    add_alias(p, action, "--config")


def add_task_choice(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--task", default="auto", choices=("auto", "encoder", "mlm", "classification", "regression",
                                                      "multiple_choice"),
                   help=f"{what} (auto: the head the checkpoint has)")


def run_convert(args: argparse.Namespace) -> int:
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


# =================================================================================================== bort presets
def add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a preset to print")


def run_presets(args: argparse.Namespace) -> int:
    from .config import BortConfig

    if args.name:
        print(BortConfig.preset(args.name).to_json_string(), end="")
    else:
        print("\n".join(BortConfig.presets()))
    return 0


# =================================================================================================== tokenizers
TOKENIZER_KINDS = ("wordpiece", "bpe")  # bort.tokenization.KINDS, without importing the tokenizers library


def add_train_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `bort train-tokenizer`."""
    parser.add_argument("files", nargs="+", help="text files to learn from, one text a line (globs allowed)")
    parser.add_argument("--kind", choices=TOKENIZER_KINDS, default="bpe",
                        help="wordpiece (BERT) or byte-level bpe (RoBERTa/Bort)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary size incl. special tokens (default: 30522 wordpiece, 50265 bpe)")
    parser.add_argument("--output-dir", required=True, help="where tokenizer.json and the vocab files go")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                        help="lowercase text first (default: yes for wordpiece, no for bpe, as BERT/RoBERTa)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair/word count to merge")
    add_no_progress(parser)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    """Run `bort train-tokenizer`; returns the exit status."""
    from .tokenization import WORDPIECE, train_tokenizer

    vocab_size = args.vocab_size or (30522 if args.kind == WORDPIECE else 50265)
    lowercase = args.lowercase if args.lowercase is not None else args.kind == WORDPIECE
    try:
        tok = train_tokenizer(args.files, args.kind, vocab_size, args.output_dir, lowercase=lowercase,
                              min_frequency=args.min_frequency, show_progress=args.progress)
    except (ValueError, OSError) as err:
        return report_error("bort train-tokenizer", err)
    print(f"trained {tok.kind} tokenizer with {tok.vocab_size} tokens -> {args.output_dir}")
    return 0


def add_tokenize_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `bort tokenize`."""
    parser.add_argument("text", nargs="*", help="texts to encode (none: read lines from stdin)")
    parser.add_argument("--vocab", required=True, help="vocab.txt, vocab.json, GluonNLP JSON, tokenizer.json or dir")
    parser.add_argument("--merges", default=None, help="BPE merges file when not beside the vocabulary")
    parser.add_argument("--pair", default=None, help="second segment, encoded with each text")
    parser.add_argument("--max-length", type=int, default=None, help="truncate to this many tokens")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                        help="override lowercasing (default: inferred)")
    parser.add_argument("--roberta-pair-style", action="store_true", help="<s> A </s></s> B </s> for pairs")
    parser.add_argument("--tokens", action="store_true", help="print tokens instead of ids")


def run_tokenize(args: argparse.Namespace) -> int:
    """Run `bort tokenize`: print one line of ids (or tokens) per text; returns the exit status."""
    from .tokenization import load_tokenizer

    try:
        tok = load_tokenizer(args.vocab, args.lowercase, merges=args.merges,
                             roberta_pair_style=args.roberta_pair_style or None)
    except (ValueError, OSError) as err:
        return report_error("bort tokenize", err)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    for text in texts:
        enc = tok.encode(text, pair=args.pair, max_length=args.max_length)
        print(" ".join(enc.tokens) if args.tokens else " ".join(map(str, enc.ids)))
    return 0


# =================================================================================================== bort export
def add_export_args(p: argparse.ArgumentParser) -> None:
    from .export import DTYPES, FORMATS, QUANTIZATIONS, SERVE_EXTRA

    p.description = ("Export a checkpoint for serving: ONNX (ONNX Runtime) or a torch.export program (.pt2), with "
                     "dynamic batch and sequence axes and the attention mask as an input; checked against eager "
                     f"PyTorch before it is written. Needs {SERVE_EXTRA}.")
    p.add_argument("model", help="checkpoint directory (native or Hugging Face) or Gluon .params file")
    p.add_argument("out", help="file to write (e.g. model.onnx, model.pt2)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from OUT's suffix, .onnx or .pt2)")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                   help="int8: ONNX Runtime dynamic quantization (onnx) or torchao int8 dynamic (pt2)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="bf16: cast the model (pt2 only)")
    add_task_choice(p, "which model to export")
    add_model_config(p, "for .params files")


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import checkpoint_task, model_for_task, read_checkpoint
    from .export import FORMATS, REFUSED, ExportError, export_model

    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lstrip(".")
        if suffix not in FORMATS:
            raise ExportError(f"{args.out}: cannot tell the format from the suffix {suffix or '(none)'!r}; pass "
                              f"--format {' or '.join(FORMATS)}")
        fmt = suffix
    cfg, state, saved = read_checkpoint(args.model, args.config)
    task = (saved or checkpoint_task(state)) if args.task == "auto" else args.task
    task = None if task == "encoder" else task
    if cfg.attention in REFUSED:  # before building the model: the refusal does not depend on the weights
        raise ExportError(f"{args.model}: attention mechanism {cfg.attention!r} cannot be exported: "
                          f"{REFUSED[cfg.attention]}")
    model = model_for_task(cfg, state, task, str(args.model))
    report = export_model(model, args.out, fmt, quantize=args.quantize, dtype=args.dtype)
    print(json.dumps({"src": str(args.model), "task": task or "encoder", **report.to_dict()}))
    return 0


# =================================================================================================== bort predict
def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Predict a task's dev or test split with a fine-tuned checkpoint: length-sorted batches, "
                     "predictions in the leaderboard format, metrics when the split has labels, sentences/s.")
    p.add_argument("model", help="fine-tuned checkpoint (e.g. run_finetune.py's OUTPUT/best)")
    add_predict_options(p)
    p.add_argument("--task", required=True, help="task name, e.g. SST-2, MNLI-mm, BoolQ")
    p.add_argument("--data-dir", dest="data_dir", default=".", help="the task's directory or a data root")
    p.add_argument("--split", choices=("dev", "test"), default="dev")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32, help="rows per batch")
    p.add_argument("--tokenizer", default=None, help="vocabulary file or directory (default: the model's)")
    p.add_argument("--output-dir", dest="output_dir", default=None,
                   help="write the leaderboard file here (default: none written)")
    p.add_argument("--skip-bad-rows", dest="skip_bad_rows", action="store_true")
    add_no_progress(p)


def add_predict_options(p: Any) -> None:
    """The options `run_finetune.py --only_inference` shares with `bort predict`."""
    from .predict import BACKENDS, DEFAULT_THREADS, PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16 (torch); int8 (torchao dynamic on torch, ONNX Runtime dynamic on onnxruntime)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads")


def run_predict(args: argparse.Namespace) -> int:
    from .predict import predict_task, report

    summary = predict_task(args.model, args.task, args.data_dir, args.split, precision=args.precision,
                           backend=args.backend, batch_size=args.batch_size, threads=args.threads,
                           tokenizer=args.tokenizer, output_dir=args.output_dir, skip_bad_rows=args.skip_bad_rows,
                           progress=args.progress)
    report(summary)
    return 0


# =================================================================================================== the commands
class Command(NamedTuple):
    """One `bort` command: the module holding its flags (`add`) and its entry point (`run`)."""
    name: str
    module: str
    add: str
    run: str
    help: str


COMMANDS = [
    Command("demo", "bort.demo", "add_demo_args", "run_demo",
            "load a real BERT, convert its checkpoint, build data and distil a Bort student from it"),
    Command("train-tokenizer", "bort.cli", "add_train_tokenizer_args", "run_train_tokenizer",
            "train a WordPiece or byte-level BPE vocabulary from text files"),
    Command("tokenize", "bort.cli", "add_tokenize_args", "run_tokenize",
            "print the token ids (or tokens) of a text with any supported vocabulary"),
    Command("create-pretraining-data", "bort.data.cli", "add_args", "run",
            "make pretraining shards (RecordIO) from text files"),
    Command("distill", "bort.distill.cli", "add_args", "run",
            "distil a student from a teacher on pretraining shards (torchrun/MPI aware)"),
    Command("mask", "bort.attention.cli", "add_args", "run",
            "learned attention masks: `mask export` binarises a DAM search into a fixed-mask checkpoint"),
    Command("finetune", "bort.finetune.cli", "add_args", "run",
            "fine-tune a checkpoint on a GLUE/SuperGLUE/RACE task (early stopping, submissions)"),
    Command("grid", "bort.finetune.cli", "add_grid_args", "run_grid_cli",
            "run a fine-tuning hyper-parameter grid (worker processes or Ray; resumable)"),
    Command("agora", "bort.finetune.cli", "add_agora_args", "run_agora_cli",
            "fine-tune with Agora: prune a hyper-parameter pool while adding reference-labelled points near errors"),
    Command("lra", "bort.lra.cli", "add_args", "run",
            "Long Range Arena: ListOps, Text, Retrieval, Image, Pathfinder with any attention; generators"),
    Command("search", "bort.search.cli", "add_args", "run",
            "FPTAS sub-architecture search over layers/heads/hidden/intermediate (size, speed, truncated-run error)"),
    Command("fetch", "bort.storage.cli", "add_fetch_args", "run_fetch",
            "download s3://BUCKET/KEY (or a prefix) with resume and checksum verification"),
    Command("push", "bort.storage.cli", "add_push_args", "run_push",
            "upload a file or directory to s3://BUCKET/PREFIX (multipart, .sha256 sidecars)"),
    Command("export", "bort.cli", "add_export_args", "run_export",
            "export a model for serving: ONNX (ONNX Runtime) or torch.export (.pt2), optionally int8 or bf16"),
    Command("predict", "bort.cli", "add_predict_args", "run_predict",
            "predict a task's dev/test split with a fine-tuned model (fp32/bf16/int8, torch or ONNX Runtime)"),
    Command("convert", "bort.cli", "add_convert_args", "run_convert",
            "convert a checkpoint (native, Hugging Face, Gluon .params) to native, HF or Gluon .params"),
    Command("presets", "bort.cli", "add_presets_args", "run_presets", "list the model presets, or print one as JSON"),
]


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `bort` parser. Every command is listed (from `COMMANDS`, importing nothing), but only those in
    `commands` (default: all) get their flags, which imports their modules."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="bort", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"bort {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if commands is None or command.name in commands:
            module = importlib.import_module(command.module)
            getattr(module, command.add)(p)
            p.set_defaults(func=getattr(module, command.run))
    return conform(parser)


def _chosen(argv: Sequence[str]) -> str | None:
    """The command named on the command line: its first word that is not an option (`bort` takes none with a
    value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; user errors become one clear line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = _chosen(argv)
    args = build_parser([chosen] if chosen else []).parse_args(argv)
    # The program, not the library, decides the process's allocator: keep large freed blocks for reuse
    # (see bort.perf and README, "Performance notes"); BORT_NO_MALLOC_TUNING=1 opts out.
    from .perf import tune_allocator

    tune_allocator()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    module = sys.modules[args.func.__module__]
    return run_reporting(f"bort {args.command}", args.func, args, getattr(module, "USER_ERRORS", ()))


if __name__ == "__main__":
    sys.exit(main())
