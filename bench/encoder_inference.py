"""Encoder inference on CPU: ours vs Hugging Face BERT, Bort vs BERT-base, bf16 and int8.

Every comparison is timed in one process with the candidates interleaved (see `bench.common`); peers get
the same weights (checked: the maximum output difference is reported). Models run in eval mode under
`torch.inference_mode` on random token ids; `--padding` (or the padded group of the full run) gives each
batch a realistic right-padding pattern (see `make_inputs`).

FLOPs counted per forward: 2 · (weights of the encoder layers' Linear maps: Q, K, V, attention output, FFN in
and out) · tokens, plus attention 4 · batch · n² · hidden per layer (QKᵀ and probabilities·V). Embedding
look-ups, biases, LayerNorm, GELU, softmax and the pooler (one token per sequence) are not counted; padded
positions are (the kernels compute them).

    python bench/encoder_inference.py [--quick] [--padding] [--profile]
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

if __package__ in (None, ""):  # run as a script: make `bench` and `bort` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bort import BortConfig, BortModel  # noqa: E402

NAME = "encoder_inference"
BERT, BORT = "bert-base", "bort_4_8_768_1024"
MAIN_SHAPE = (8, 128)


# --- models ------------------------------------------------------------------------------------------------
def encoder_flops(config: BortConfig, batch: int, seq: int) -> dict[str, float]:
    """FLOPs of one forward pass as counted in the module docstring."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    matmul_params = layers * (4 * h * h + 2 * h * f)
    linear = 2.0 * matmul_params * batch * seq
    attention = 4.0 * batch * seq * seq * h * layers
    return {"matmul_params": matmul_params, "linear": linear, "attention": attention, "total": linear + attention}


def hf_peer(config: BortConfig) -> nn.Module:
    """A `transformers.BertModel` (SDPA attention) of the same shape; a model without token types gets a
    one-row type table that `build_pair` zeroes, so both compute the same function."""
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBert

    hf_config = HFConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                         num_hidden_layers=config.num_hidden_layers,
                         num_attention_heads=config.num_attention_heads,
                         intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
                         max_position_embeddings=config.max_position_embeddings,
                         type_vocab_size=max(1, config.type_vocab_size), layer_norm_eps=config.layer_norm_eps,
                         pad_token_id=config.pad_token_id, attn_implementation="sdpa")
    return HFBert(hf_config, add_pooling_layer=config.add_pooler).eval()


def build_pair(preset: str, seed: int = 0) -> tuple[BortConfig, nn.Module, nn.Module]:
    """(config, ours, HF peer) with the peer's randomly initialised weights copied into ours."""
    config = BortConfig.preset(preset)
    torch.manual_seed(seed)
    peer = hf_peer(config)
    state = {k: v for k, v in peer.state_dict().items() if k != "embeddings.position_ids"}
    if config.type_vocab_size == 0:
        with torch.no_grad():
            peer.embeddings.token_type_embeddings.weight.zero_()
        state.pop("embeddings.token_type_embeddings.weight")
    ours = BortModel(config).eval()
    ours.load_state_dict(state, strict=True)
    return config, ours, peer


def quantized(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every Linear (weights int8, activations quantized per batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its deprecation
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def make_inputs(config: BortConfig, batch: int, seq: int, padding: bool, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and an attention mask (1 = real token).

    With `padding`, lengths are drawn uniformly from [seq/4, seq] and the longest row is set to `seq`, as a
    collator padding to the batch's longest sequence produces; padded positions hold the pad id.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padding and batch > 1:
        lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=gen)
        lengths[0] = seq
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, config.pad_token_id)
    return ids, mask


def forward_fn(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(ids, attention_mask=mask).last_hidden_state
    return call


def output_error(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """max |Δ| and RMS(Δ) over real tokens, with the RMS of the reference for scale."""
    keep = mask.bool()
    ref, out = reference.float()[keep], other.float()[keep]
    delta = out - ref
    return {"max_abs": delta.abs().max().item(), "rms": delta.pow(2).mean().sqrt().item(),
            "reference_rms": ref.pow(2).mean().sqrt().item()}


# --- the benchmark -----------------------------------------------------------------------------------------
def plan(quick: bool, padding: bool) -> list[dict[str, Any]]:
    """The timing groups: shape, padding, which models and precisions, repeats."""
    if quick:
        return [dict(shape=(1, 128), padding=padding, bort=False, precisions=False, repeats=3),
                dict(shape=MAIN_SHAPE, padding=padding, bort=True, precisions=True, repeats=3)]
    groups = [dict(shape=(1, 128), padding=False, bort=True, precisions=False, repeats=7),
              dict(shape=(1, 512), padding=False, bort=True, precisions=False, repeats=7),
              dict(shape=MAIN_SHAPE, padding=padding, bort=True, precisions=True, repeats=7),
              dict(shape=(8, 512), padding=False, bort=True, precisions=False, repeats=5)]
    if not padding:
        groups.insert(3, dict(shape=MAIN_SHAPE, padding=True, bort=True, precisions=False, repeats=7))
    return groups


def run_group(models: dict[str, dict[str, Any]], group: dict[str, Any], gemm_n: dict[str, int]
              ) -> dict[str, Any]:
    """Time one group's candidates interleaved; add output checks, FLOPs and GEMM fractions."""
    batch, seq = group["shape"]
    presets = [BERT, BORT] if group["bort"] else [BERT]
    candidates: dict[str, Callable[[], object]] = {}
    checks: dict[str, Any] = {}
    for preset in presets:
        m = models[preset]
        ids, mask = make_inputs(m["config"], batch, seq, group["padding"])
        variants = {"ours fp32": m["ours"], "hf fp32": m["hf"]}
        if group["precisions"]:
            variants.update({"ours bf16": m["bf16"], "ours int8": m["int8"]})
        reference = forward_fn(m["ours"], ids, mask)()
        for variant, model in variants.items():
            candidates[f"{preset} {variant}"] = forward_fn(model, ids, mask)
            if variant != "ours fp32":
                checks[f"{preset} {variant}"] = output_error(reference, candidates[f"{preset} {variant}"](), mask)
    dtypes = ["fp32", "bf16"] if group["precisions"] else ["fp32"]
    for d in dtypes:
        candidates[f"gemm {d}"] = common.gemm_callable(gemm_n[d], common.DTYPES[d])
    label = f"{batch}x{seq}{' padded' if group['padding'] else ''}"
    print(f"[{NAME}] {label}: {len(candidates)} candidates x {group['repeats']} rounds", flush=True)
    timings = common.time_interleaved(candidates, repeats=group["repeats"], warmup=1, min_sample_time=0.3)
    gemm = {d: 2.0 * gemm_n[d] ** 3 / timings[f"gemm {d}"].median / 1e9 for d in dtypes}
    flops = {p: encoder_flops(models[p]["config"], batch, seq) for p in presets}
    rows = {}
    for name, timing in timings.items():
        if name.startswith("gemm"):
            continue
        preset = BERT if name.startswith(BERT) else BORT
        dtype = name.rsplit(" ", 1)[1]
        achieved = flops[preset]["total"] / timing.median / 1e9
        rate = gemm["bf16" if dtype == "bf16" else "fp32"]
        rows[name] = {"timing": timing, "gflops": achieved, "gemm_fraction": achieved / rate,
                      "gemm_reference": "bf16" if dtype == "bf16" else "fp32", "check": checks.get(name)}
    ratios = {f"{p} hf/ours": common.paired_ratio(timings[f"{p} hf fp32"], timings[f"{p} ours fp32"])
              for p in presets}
    if group["bort"]:
        for side in ("ours", "hf"):
            ratios[f"bert/bort {side} fp32"] = common.paired_ratio(timings[f"{BERT} {side} fp32"],
                                                                   timings[f"{BORT} {side} fp32"])
    if group["precisions"]:
        for p in presets:
            for v in ("ours fp32", "ours bf16", "ours int8"):
                ratios[f"bert fp32/{p} {v}"] = common.paired_ratio(timings[f"{BERT} ours fp32"],
                                                                    timings[f"{p} {v}"])
        if len(presets) == 2:
            ratios["bert/bort ours bf16"] = common.paired_ratio(timings[f"{BERT} ours bf16"],
                                                                timings[f"{BORT} ours bf16"])
    return {"label": label, "shape": [batch, seq], "padding": group["padding"],
            "tokens_real": int(make_inputs(models[BERT]["config"], batch, seq, group["padding"])[1].sum()),
            "gemm_gflops": gemm, "flops": flops, "candidates": rows, "ratios": ratios}


def build_models() -> dict[str, dict[str, Any]]:
    """BERT-base and Bort: ours (fp32, bf16, int8) and the HF peer, all from the same weights."""
    models = {}
    for preset in (BERT, BORT):
        config, ours, peer = build_pair(preset)
        models[preset] = {"config": config, "ours": ours, "hf": peer,
                          "bf16": copy.deepcopy(ours).to(torch.bfloat16), "int8": quantized(ours)}
    return models


def run(quick: bool = False, padding: bool = False, write: bool = True) -> dict[str, Any]:
    """Run every group of `plan(quick, padding)`; write results/encoder_inference.{json,md,png}."""
    torch.manual_seed(0)
    machine = common.machine_info()
    gemm_n = {d: common.gemm_size(common.DTYPES[d]) for d in ("fp32", "bf16")}
    gemm = common.gemm_rates(sizes=gemm_n, repeats=3 if quick else 7)
    models = build_models()
    flop_ratio = (encoder_flops(models[BERT]["config"], *MAIN_SHAPE)["total"]
                  / encoder_flops(models[BORT]["config"], *MAIN_SHAPE)["total"])
    print(f"[{NAME}] FLOP ratio BERT-base / Bort at {MAIN_SHAPE[0]}x{MAIN_SHAPE[1]}: {flop_ratio:.3f}", flush=True)
    groups = [run_group(models, g, gemm_n) for g in plan(quick, padding)]
    result = {"name": NAME, "quick": quick, "machine": machine, "gemm": gemm, "flop_ratio_bert_over_bort": flop_ratio,
              "flops_counted": __doc__.split("FLOPs counted per forward: ")[1].split("\n\n")[0].replace("\n", " "),
              "groups": groups}
    result["markdown"] = report(result)
    if write:
        data = {k: v for k, v in result.items() if k != "markdown"}
        common.write_results(NAME, data, markdown=result["markdown"], plot=lambda fig: plot(fig, result))
    return result


# --- report ------------------------------------------------------------------------------------------------
def _ms(timing: common.Timing) -> str:
    return f"{timing.median * 1e3:.0f} ({timing.iqr * 1e3:.0f})"


def _ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} [{r['q1']:.2f}–{r['q3']:.2f}]"


def report(result: dict[str, Any]) -> str:
    """Markdown: ours vs HF per shape, Bort vs BERT-base, precisions, GEMM fractions."""
    g = result["gemm"]
    lines = [f"## Encoder inference (CPU{', quick' if result['quick'] else ''})", "",
             f"GEMM (torch.mm, medians): fp32 {g['fp32']['gflops']:.0f} GFLOP/s (n={g['fp32']['n']}), "
             f"bf16 {g['bf16']['gflops']:.0f} GFLOP/s (n={g['bf16']['n']}). "
             f"FLOP ratio BERT-base / Bort: {result['flop_ratio_bert_over_bort']:.3f}.", "",
             "Times: median ms (IQR). Ratios: median of per-round ratios [quartiles]; > 1 means the "
             "denominator is faster.", "",
             "### Ours vs HF BertModel (sdpa), same weights, fp32", "",
             "| model | shape | ours ms | HF ms | HF/ours | max abs diff |", "|---|---|---|---|---|---|"]
    for grp in result["groups"]:
        for preset in (BERT, BORT):
            key = f"{preset} hf/ours"
            if key in grp["ratios"]:
                c = grp["candidates"]
                lines.append(f"| {preset} | {grp['label']} | {_ms(c[f'{preset} ours fp32']['timing'])} | "
                             f"{_ms(c[f'{preset} hf fp32']['timing'])} | {_ratio(grp['ratios'][key])} | "
                             f"{c[f'{preset} hf fp32']['check']['max_abs']:.1e} |")
    lines += ["", "### BERT-base time / Bort time, fp32 (FLOP ratio "
              f"{result['flop_ratio_bert_over_bort']:.2f})", "", "| shape | ours | HF |", "|---|---|---|"]
    for grp in result["groups"]:
        if "bert/bort ours fp32" in grp["ratios"]:
            lines.append(f"| {grp['label']} | {_ratio(grp['ratios']['bert/bort ours fp32'])} | "
                         f"{_ratio(grp['ratios']['bert/bort hf fp32'])} |")
    for grp in result["groups"]:
        if "bert fp32/bert-base ours bf16" not in grp["ratios"]:
            continue
        lines += ["", f"### Precisions at {grp['label']} (ours): speed-up vs BERT-base fp32, error vs the "
                  "same model in fp32", "",
                  "| model | ms | speed-up | max abs err | RMS err | RMS fp32 out |", "|---|---|---|---|---|---|"]
        for preset in (BERT, BORT):
            for v in ("fp32", "bf16", "int8"):
                c = grp["candidates"].get(f"{preset} ours {v}")
                if c is None:
                    continue
                chk = c["check"] or {}
                err = (f"{chk['max_abs']:.3g} | {chk['rms']:.3g} | {chk['reference_rms']:.3g}" if chk
                       else "— | — | —")
                lines.append(f"| {preset} {v} | {_ms(c['timing'])} | "
                             f"{_ratio(grp['ratios'][f'bert fp32/{preset} ours {v}'])} | {err} |")
    lines += ["", "### Achieved fraction of the GEMM rate measured in the same rounds", "",
              "| shape | candidate | GFLOP/s | fraction (of) |", "|---|---|---|---|"]
    for grp in result["groups"]:
        for d, rate in grp["gemm_gflops"].items():
            lines.append(f"| {grp['label']} | torch.mm {d} n={result['gemm'][d]['n']} (in group) | {rate:.0f} | "
                         f"1 ({d}) |")
        for name, c in grp["candidates"].items():
            lines.append(f"| {grp['label']} | {name} | {c['gflops']:.0f} | "
                         f"{c['gemm_fraction']:.2f} ({c['gemm_reference']}) |")
    lines += ["", f"FLOPs counted: {result['flops_counted']}", ""]
    return "\n".join(lines)


def plot(fig: Any, result: dict[str, Any]) -> None:
    """Three panels: HF/ours per shape, BERT-base/Bort per shape, speed-ups vs BERT-base fp32."""
    ax1, ax2, ax3 = fig.subplots(1, 3)

    def bars(ax: Any, labels: list[str], ratios: list[dict[str, float]], title: str, line: float | None) -> None:
        med = [r["median"] for r in ratios]
        err = [[r["median"] - r["q1"] for r in ratios], [r["q3"] - r["median"] for r in ratios]]
        ax.bar(range(len(med)), med, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(med)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if line is not None:
            ax.axhline(line, color="tab:red", linestyle="--", linewidth=1)

    groups = result["groups"]
    hf = [(f"{p.split('_')[0]} {g['label']}", g["ratios"][f"{p} hf/ours"])
          for g in groups for p in (BERT, BORT) if f"{p} hf/ours" in g["ratios"]]
    bars(ax1, [a for a, _ in hf], [b for _, b in hf], "HF time / ours (fp32)", 1.0)
    bb = [(g["label"], g["ratios"]["bert/bort ours fp32"]) for g in groups if "bert/bort ours fp32" in g["ratios"]]
    bars(ax2, [a for a, _ in bb], [b for _, b in bb], "BERT-base / Bort time (ours)",
         result["flop_ratio_bert_over_bort"])
    prec = next((g for g in groups if "bert fp32/bert-base ours bf16" in g["ratios"]), None)
    if prec is not None:
        keys = [(f"{p.split('_')[0]} {v}", f"bert fp32/{p} ours {v}") for p in (BERT, BORT)
                for v in ("fp32", "bf16", "int8")]
        bars(ax3, [a for a, _ in keys], [prec["ratios"][k] for _, k in keys],
             f"speed-up vs BERT-base fp32 ({prec['label']})", 1.0)


# --- profile -----------------------------------------------------------------------------------------------
def profile(shape: tuple[int, int] = MAIN_SHAPE, padding: bool = False, rows: int = 12) -> None:
    """Print the top operators (self CPU time) of ours and the HF peer at one BERT-base shape."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    config, ours, peer = build_pair(BERT)
    ids, mask = make_inputs(config, *shape, padding)
    for label, model in (("ours", ours), ("hf", peer)):
        fn = forward_fn(model, ids, mask)
        fn()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"--- {label} {shape[0]}x{shape[1]}{' padded' if padding else ''}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about 2 minutes)")
    parser.add_argument("--padding", action="store_true", help="pad the main 8x128 group realistically")
    parser.add_argument("--profile", action="store_true", help="only print an operator profile of ours vs HF")
    args = parser.parse_args(argv)
    if args.profile:
        profile(padding=args.padding)
        return
    print(run(quick=args.quick, padding=args.padding)["markdown"])


if __name__ == "__main__":
    main()
