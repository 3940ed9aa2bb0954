"""Command-line flags of `bort mask`: learned attention masks (`bort mask export` binarises a DAM search into a
fixed-mask checkpoint; see `bort.attention.mask_export`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


# --- `bort mask` --------------------------------------------------------------------------------------------
def add_args(parser: argparse.ArgumentParser) -> None:
    """`bort mask <action>`; only `export` so far."""
    from . import mask_export
    from .fixed_mask import IMPLS

    sub = parser.add_subparsers(dest="mask_command", required=True, metavar="ACTION")
    p = sub.add_parser("export", help="binarise a DAM-searched checkpoint into a fixed-mask checkpoint",
                       description=(mask_export.__doc__ or "").splitlines()[0])
    p.add_argument("src", help="searched checkpoint (attention dam_s or dam_u)")
    p.add_argument("out_dir", help="output checkpoint directory")
    p.add_argument("--impl", choices=IMPLS, default="masked", help="execution of the fixed mask")
    p.add_argument("--length", type=int, default=None,
                   help="n of the exported mask (default: the searched logits' max_length)")
    p.add_argument("--block-size", dest="block_size", type=int, default=64, help="tile size for block_sparse")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_false", help="skip the PNG heatmaps")


def run(args: argparse.Namespace) -> int:
    """Run `bort mask <action>`."""
    from ..checkpoint import checkpoint_task, model_for_task, read_checkpoint, save_pretrained
    from .dam import KINDS, export_mask
    from .mask_export import HEATMAP_DIR, sparsity, to_fixed_mask, write_heatmaps

    if args.mask_command != "export":  # argparse allows only the listed actions; this guards additions
        raise ValueError(f"unknown mask action {args.mask_command!r}")
    cfg, state, saved_task = read_checkpoint(args.src)
    if cfg.attention not in KINDS:
        raise ValueError(f"{args.src}: attention is {cfg.attention!r}, not a DAM search; export needs one of "
                         f"{', '.join(KINDS)}")
    task = saved_task or checkpoint_task(state)
    searched = model_for_task(cfg, state, None if task == "encoder" else task, str(args.src))
    fixed = to_fixed_mask(searched, impl=args.impl, length=args.length, block_size=args.block_size)
    out = save_pretrained(fixed, args.out_dir)
    mask = export_mask(searched, args.length)
    stats = sparsity(mask)
    (Path(out) / "mask_sparsity.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"exported {cfg.attention} mask of {args.src} (n={stats['length']}, impl {args.impl}) to {out}")
    for s, row in enumerate(stats["per_head"] if mask.dim() == 4 else [stats["per_head"]]):
        for h, value in enumerate(row):
            print(f"{'layer %d ' % s if mask.dim() == 4 else ''}head {h}: sparsity {value:.1f}%")
    print(f"overall: sparsity {stats['overall']:.1f}%")
    if args.heatmaps:
        files = write_heatmaps(mask, Path(out) / HEATMAP_DIR)
        print(f"heatmaps: {len(files)} PNG files in {Path(out) / HEATMAP_DIR}")
    return 0
