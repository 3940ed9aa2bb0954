"""One distillation training step on CPU: ours vs the same student as `transformers.BertForMaskedLM`.

Both students are Bort-shaped (4 layers, width 1024, FFN 768, 8 heads, RoBERTa's 50,265-id vocabulary),
fp32, batch 8 × 128 with 20 masked positions per row, the same teacher (a 2-layer Bort-shaped MLM of
ours, decoding only masked positions), loss MLM + T²·KD at the masked positions, clipping at norm 1.
- ours: `BortForMaskedLM` decoding only at masked positions, fused AdamW (our `build_optimizer`), gradient
  buffers zeroed in place and reused (as the recipe does);
- peer: HF `BertForMaskedLM` computing logits at every position (what it does), then gathering the masked
  ones for the same loss, with `torch.optim.AdamW` defaults (foreach).
The ratio is tokens/s ours / tokens/s peer, per interleaved round (median and quartiles).

    python bench/distill_step.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

NAME = "distill_step"
BATCH, SEQ, MASKED = 8, 128, 20


def _inputs(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (BATCH, SEQ), generator=gen)
    positions = torch.stack([torch.randperm(SEQ - 2, generator=gen)[:MASKED].sort().values + 1 for _ in range(BATCH)])
    labels = ids.gather(1, positions)
    ids.scatter_(1, positions, 50264)
    return {"input_ids": ids, "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
            "masked_positions": positions, "masked_ids": labels, "masked_weights": torch.ones(BATCH, MASKED)}


def build(quick: bool) -> dict[str, Any]:
    import transformers

    from bort import BortConfig, BortForMaskedLM
    from bort.distill.losses import kd_loss, mlm_loss
    from bort.train.optim import build_optimizer

    torch.manual_seed(0)
    cfg = BortConfig.preset("bort_4_8_768_1024", hidden_dropout_prob=0.1)
    teacher = BortForMaskedLM(BortConfig.preset("bort_4_8_768_1024", num_hidden_layers=2)).eval().requires_grad_(False)
    ours = BortForMaskedLM(cfg).train()
    hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                     num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                                     intermediate_size=cfg.intermediate_size, max_position_embeddings=512,
                                     type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
    peer = transformers.BertForMaskedLM(hf_cfg).train()
    batch = _inputs(cfg.vocab_size)
    opt_ours = build_optimizer(ours, name="adamw", lr=1e-4, weight_decay=0.01)
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6)

    def teacher_logits() -> torch.Tensor:
        with torch.no_grad():
            return teacher(batch["input_ids"], batch["attention_mask"], masked_positions=batch["masked_positions"]).logits

    def loss_of(student_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        return (0.1 * mlm_loss(student_logits, batch["masked_ids"], batch["masked_weights"])
                + 0.5 * kd_loss(student_logits, t_logits, batch["masked_weights"], 2.0))

    def step_ours() -> None:
        t = teacher_logits()
        logits = ours(batch["input_ids"], batch["attention_mask"], masked_positions=batch["masked_positions"]).logits
        loss_of(logits, t).backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=False)  # reuse the gradient buffers (see the recipe)

    def step_peer() -> None:
        t = teacher_logits()
        full = peer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        index = batch["masked_positions"].unsqueeze(-1).expand(-1, -1, full.shape[-1])
        loss_of(full.gather(1, index), t).backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
        opt_peer.step()
        opt_peer.zero_grad(set_to_none=True)

    return {"ours (masked-only decode, fused AdamW)": step_ours,
            "HF BertForMaskedLM (all positions, AdamW)": step_peer}


def run(quick: bool = False, write: bool = True) -> dict[str, Any]:
    """Interleaved timing of the two training steps; writes bench/results/distill_step.*."""
    machine = common.machine_info()
    candidates = build(quick)
    names = list(candidates)
    print(f"[{NAME}] {len(names)} candidates, batch {BATCH}x{SEQ}, {MASKED} masked per row", flush=True)
    timings = common.time_interleaved(candidates, repeats=4 if quick else 9, warmup=1)
    ratio = common.paired_ratio(timings[names[1]], timings[names[0]])
    tokens = BATCH * SEQ
    rows = [{"step": n, "ms (IQR)": f"{timings[n].median * 1e3:.0f} ({timings[n].iqr * 1e3:.0f})",
             "tokens/s": f"{tokens / timings[n].median:.0f}"} for n in names]
    markdown = "\n".join([
        f"## Distillation training step (CPU{', quick' if quick else ''})", "",
        f"Bort-shaped student (4×1024, FFN 768, 8 heads, 50,265-id vocabulary), fp32, batch {BATCH}×{SEQ}, "
        f"{MASKED} masked positions per row, the same 2-layer teacher, MLM + T²·KD, clip 1; medians over "
        f"{len(timings[names[0]].samples)} interleaved rounds.", "",
        common.markdown_table(rows), "",
        f"Tokens/s ours / HF: **{ratio['median']:.2f}** [{ratio['q1']:.2f}–{ratio['q3']:.2f}] (target ≥ 1.8).", ""])
    result = {"name": NAME, "quick": quick, "machine": machine,
              "timings": {n: timings[n] for n in names}, "ratio": ratio, "markdown": markdown}
    if write:
        common.write_results(NAME, {k: v for k, v in result.items() if k != "markdown"}, markdown=markdown)
    print(markdown, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
