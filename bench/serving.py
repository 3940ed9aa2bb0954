"""Serving speed end to end, text to labels: a Bort-shaped classifier through `bort predict`'s library path
against HF BERT-base, on the 872 real SST-2 dev sentences at their real lengths.

    python bench/serving.py [--repeats 3] [--threads 2]

Every candidate starts from the sentences and ends with a label per sentence, tokenization included, batch 32,
on `--threads` threads (torch and ONNX Runtime alike):
- ours: `bort.predict.Predictor` on a `bort_4_8_768_1024` classifier with the shipped Bort vocabulary (random
  weights: speed does not depend on them), length-sorted batches padded to each batch's longest row, in fp32 /
  bf16 / int8 on torch (torchao int8) and fp32 / int8 on ONNX Runtime (exported by `bort.export`);
- peers: HF `BertForSequenceClassification` with `BertConfig()` (BERT-base, random init, nothing downloaded) in
  fp32 eager, batches in file order through `BertTokenizerFast(..., padding=True)` as HF users run it; and the
  same model exported with `torch.onnx.export` and quantized by ONNX Runtime's `quantize_dynamic` (int8, per
  channel as ours), fed the same file-order batches.

Candidates are timed interleaved (`bench.common.time_interleaved`); we report median sentences/s and, per
round, the ratio to HF BERT-base fp32 eager and to BERT-base ONNX Runtime int8. Model building, quantization
and export happen before timing. int8 speed depends on the CPU's VNNI support: the table names the ISA.

Accuracy of the reduced precisions, on a really fine-tuned model (`serving_accuracy.{md,json}`):

    python run_finetune.py --task SST-2 --model MINILM_DIR --data-dir DATA/glue --dev-split 600 --epochs 3 \
        --batch-size 16 --warmup-ratio 0.1 --weight-decay 0.01 --optimizer adamw --max-length 128 --output-dir FT
    python bench/serving.py --accuracy FT/best

predicts the 272 SST-2 dev rows the fine-tuning held out (the same `--dev-split` and `--split-seed`) in every
precision and backend and compares each with fp32 on torch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

NAME = "serving"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2_DEV = SHARED / "glue" / "SST-2" / "dev.tsv"
BERT_VOCAB = SHARED / "vocab" / "bert-base-uncased" / "vocab.txt"
BATCH = 32
OURS = [("fp32", "torch"), ("bf16", "torch"), ("int8", "torch"), ("fp32", "onnxruntime"), ("int8", "onnxruntime")]
HF_FP32 = "HF BERT-base fp32 eager"
HF_ORT_INT8 = "BERT-base ONNX Runtime int8"


def _ours(examples: list[Any], threads: int) -> dict[str, Callable[[], object]]:
    from bort import BortConfig
    from bort.model import BortForSequenceClassification
    from bort.predict import Predictor
    from bort.tokenization import BORT_VOCABULARY, load_tokenizer

    torch.manual_seed(0)
    model = BortForSequenceClassification(BortConfig.preset("bort_4_8_768_1024", num_labels=2)).eval()
    tokenizer = load_tokenizer(BORT_VOCABULARY)
    candidates = {}
    for precision, backend in OURS:
        print(f"[{NAME}] building Bort {precision} {backend}", flush=True)
        predictor = Predictor(model, tokenizer, "classification", precision=precision, backend=backend,
                              batch_size=BATCH, threads=threads)
        candidates[f"Bort {precision} {backend}"] = (lambda p=predictor: p.predict(examples).predictions)
    return candidates


def _hf_peers(sentences: list[str], threads: int, tmp: Path) -> dict[str, Callable[[], object]]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    tokenizer = BertTokenizerFast(vocab_file=str(BERT_VOCAB), do_lower_case=True)
    batches = [sentences[i:i + BATCH] for i in range(0, len(sentences), BATCH)]

    @torch.no_grad()
    def hf_eager() -> list[int]:
        labels: list[int] = []
        for rows in batches:
            enc = tokenizer(rows, padding=True, truncation=True, return_tensors="pt")
            labels += model(**enc).logits.argmax(-1).tolist()
        return labels

    print(f"[{NAME}] exporting BERT-base to ONNX and quantizing it (int8)", flush=True)
    example = tokenizer(sentences[:2], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32, int8 = tmp / "bert.onnx", tmp / "bert.int8.onnx"
    batch, seq = torch.export.Dim("batch", max=4096), torch.export.Dim("seq", max=512)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, tuple(example[n] for n in names), dynamo=True, input_names=names,
                                    output_names=["logits"],
                                    dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False)
    program.save(str(fp32))
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])

    def ort_int8() -> list[int]:
        labels: list[int] = []
        for rows in batches:
            enc = tokenizer(rows, padding=True, truncation=True, return_tensors="np")
            logits = session.run(None, {n: enc[n].astype("int64") for n in names})[0]
            labels += logits.argmax(-1).tolist()
        return labels

    return {HF_FP32: hf_eager, HF_ORT_INT8: ort_int8}


def run(quick: bool = False, repeats: int = 3, threads: int = 2, write: bool = True) -> dict[str, Any] | None:
    """Time every candidate (see the module docstring); `quick` (as `bench/run_all.py --quick` asks): one round."""
    repeats = 1 if quick else repeats
    if not SST2_DEV.is_file() or not BERT_VOCAB.is_file():
        print(f"[{NAME}] skipped: needs {SST2_DEV} and {BERT_VOCAB}", flush=True)
        return None
    from bort.data.tasks import get_task

    torch.set_num_threads(threads)
    examples = list(get_task("SST-2").read(SST2_DEV.parent, "dev"))
    sentences = [ex.text_a for ex in examples]
    machine = common.machine_info()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        candidates = {**_hf_peers(sentences, threads, Path(tmp)), **_ours(examples, threads)}
        build_s = time.perf_counter() - start
        print(f"[{NAME}] built in {build_s:.0f}s; timing {len(candidates)} candidates × {repeats} rounds", flush=True)
        timings = common.time_interleaved(candidates, repeats=repeats, warmup=1)
    rows = []
    for name, timing in timings.items():
        rows.append({"candidate": name, "sentences/s": len(sentences) / timing.median,
                     "s per pass (median)": timing.median, "IQR s": timing.iqr,
                     f"× {HF_FP32}": common.paired_ratio(timings[HF_FP32], timing)["median"],
                     f"× {HF_ORT_INT8}": common.paired_ratio(timings[HF_ORT_INT8], timing)["median"]})
    ours = [r for r in rows if r["candidate"].startswith("Bort")]
    best_int8 = max((r for r in ours if " int8 " in r["candidate"]), key=lambda r: r["sentences/s"])
    best_fp32 = max((r for r in ours if " fp32 " in r["candidate"]), key=lambda r: r["sentences/s"])
    targets = [
        {"target": "Bort int8 (fastest backend) ≥ 10× HF fp32 eager", "candidate": best_int8["candidate"],
         "measured ×": best_int8[f"× {HF_FP32}"], "met": best_int8[f"× {HF_FP32}"] >= 10},
        {"target": "Bort fp32 ≥ 4.5× HF fp32 eager", "candidate": best_fp32["candidate"],
         "measured ×": best_fp32[f"× {HF_FP32}"], "met": best_fp32[f"× {HF_FP32}"] >= 4.5},
        {"target": "Bort (fastest) ≥ 3× BERT-base ORT int8", "candidate": best_int8["candidate"],
         "measured ×": best_int8[f"× {HF_ORT_INT8}"], "met": best_int8[f"× {HF_ORT_INT8}"] >= 3},
    ]
    markdown = (f"# {NAME}\n\n{len(sentences)} real SST-2 dev sentences, text → labels (tokenization included), "
                f"batch {BATCH}, {threads} threads, median of {repeats} interleaved rounds; ratios are per-round "
                f"medians (above 1: faster than the peer).\n\nCPU: {machine['cpu_model']}; ISA: "
                f"{', '.join(machine['isa']) or 'none of the listed'}; torch CPU capability "
                f"{machine['torch_cpu_capability']}; torch {machine['torch']}.\n\n"
                + common.markdown_table(rows) + "\n## Targets (issue 23)\n\n" + common.markdown_table(targets)
                + "\nAccuracy of int8 / bf16 against fp32 on a fine-tuned model: `serving_accuracy.md` "
                  "(`--accuracy`).\n")
    result = {"name": NAME, "machine": machine, "sentences": len(sentences), "batch": BATCH, "threads": threads,
              "repeats": repeats, "build_seconds": build_s, "timings": timings, "rows": rows, "targets": targets}
    if write:
        common.write_results(NAME, result, markdown=markdown, plot=lambda fig: _plot(fig, rows))
    result["markdown"] = markdown
    return result


def accuracy(finetuned: Path, dev_split: int = 600, split_seed: int = 0, threads: int = 2,
             write: bool = True) -> dict[str, Any] | None:
    """Held-out accuracy of `finetuned` (an SST-2 classifier trained on the first `dev_split` rows of the shuffled
    dev file) in every precision and backend of `OURS`, against fp32 on torch."""
    if not SST2_DEV.is_file():
        print(f"[{NAME}] skipped: needs {SST2_DEV}", flush=True)
        return None
    from bort.checkpoint import load_pretrained
    from bort.data.tasks import get_task
    from bort.finetune.runner import split_examples
    from bort.predict import Predictor
    from bort.tokenization import load_tokenizer

    torch.set_num_threads(threads)
    task = get_task("SST-2")
    _, held_out = split_examples(list(task.read(SST2_DEV.parent, "dev")), dev_split, split_seed)
    model, tokenizer = load_pretrained(finetuned, task="classification").eval(), load_tokenizer(finetuned)
    rows = []
    for precision, backend in OURS:
        result = Predictor(model, tokenizer, "classification", precision=precision, backend=backend,
                           batch_size=BATCH, threads=threads).predict(held_out)
        rows.append({"candidate": f"{precision} {backend}",
                     "accuracy": task.evaluate(result.predictions, held_out)["acc"],
                     "sentences/s": result.sentences_per_second})
    for row in rows:
        row["Δ vs fp32 torch (points)"] = 100 * (row["accuracy"] - rows[0]["accuracy"])
    machine = common.machine_info()
    markdown = (f"# {NAME}_accuracy\n\nThe {len(held_out)} SST-2 dev rows held out by a fine-tuning on the "
                f"other {dev_split} (split seed {split_seed}), model `{finetuned.parent.name}/{finetuned.name}` "
                f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), batch {BATCH}, "
                f"{threads} threads; CPU {machine['cpu_model']} ({', '.join(machine['isa'])}).\n\n"
                + common.markdown_table(rows)
                + "\nTarget (issue 23): int8 within 1 point of fp32; "
                + ", ".join(f"{r['candidate']} {r['Δ vs fp32 torch (points)']:+.1f}" for r in rows[1:]) + ".\n")
    result = {"name": f"{NAME}_accuracy", "machine": machine, "held_out": len(held_out), "rows": rows}
    if write:
        common.write_results(f"{NAME}_accuracy", result, markdown=markdown)
    result["markdown"] = markdown
    return result


def _plot(fig: Any, rows: list[dict[str, Any]]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    names = [r["candidate"] for r in rows]
    ax.barh(names, [r["sentences/s"] for r in rows],
            color=["tab:blue" if n.startswith("Bort") else "tab:gray" for n in names])
    ax.set_xlabel("sentences/s (SST-2 dev, text → labels, median)")
    ax.invert_yaxis()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every candidate (default 2)")
    parser.add_argument("--accuracy", type=Path, default=None, metavar="FINETUNED",
                        help="instead of timing: held-out accuracy of this SST-2 classifier (fine-tuned with "
                             "--dev-split) in every precision and backend")
    parser.add_argument("--dev-split", type=int, default=600, help="rows the fine-tuning trained on (default 600)")
    parser.add_argument("--split-seed", type=int, default=0, help="the fine-tuning's --split-seed (default 0)")
    args = parser.parse_args(argv)
    if args.accuracy is not None:
        result = accuracy(args.accuracy, args.dev_split, args.split_seed, args.threads)
    else:
        result = run(repeats=args.repeats, threads=args.threads)
    if result is not None:
        print(result["markdown"])


if __name__ == "__main__":
    main()
