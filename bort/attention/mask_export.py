"""`bort mask export`: binarise a DAM-searched checkpoint into a fixed-mask one, with sparsity and heatmaps.

    bort mask export searched/final exported                  # dense scores, masked softmax
    bort mask export searched/final exported --impl block_sparse

The output is a native checkpoint loadable by `load_pretrained` (same task head and weights; attention
"fixed_mask" holding the mask that `export_mask` gives: keep where the keep-logit wins). The command prints
the sparsity (percentage of zero entries, SparseBERT's ratio) per head and overall, writes them to
`mask_sparsity.json`, and draws one PNG heatmap per head plus a grid of all heads in OUT_DIR/mask_heatmaps/.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .dam import dam_masks, export_mask
from .fixed_mask import StoredMask

HEATMAP_DIR = "mask_heatmaps"


def to_fixed_mask(model: nn.Module, impl: str = "masked", length: int | None = None,
                  block_size: int = 64) -> nn.Module:
    """A model of the same class and weights as the searched `model` whose attention is its binarised mask
    ("fixed_mask", executed by `impl`), at `length` (default the logits' max_length)."""
    dams = dam_masks(model)
    mask = export_mask(model, length)  # also rejects a model without exactly one DAM mask
    params = {"impl": impl, "length": int(mask.shape[-1]), "per_layer": dams[0].per_layer, "block_size": block_size}
    config = dataclasses.replace(model.config, attention="fixed_mask", attention_params=params)
    fixed = type(model)(config)
    dam_prefix = next(f"{name}." for name, module in model.named_modules() if module is dams[0])
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(dam_prefix)}
    missing, unexpected = fixed.load_state_dict(state, strict=False)
    stored = [(name, m) for name, m in fixed.named_modules() if isinstance(m, StoredMask)]
    if unexpected or missing != [f"{stored[0][0]}.mask"]:  # anything else would be a bug, not bad input
        raise RuntimeError(f"export: state does not fit the fixed-mask model (missing {missing}, "
                           f"unexpected {unexpected})")
    stored[0][1].set_mask(mask)
    return fixed.train(model.training)


def sparsity(mask: torch.Tensor) -> dict[str, Any]:
    """Percentage of zero entries per head (a list per layer for a per-layer mask) and overall."""
    zeros = 100.0 * (1.0 - mask.float().mean(dim=(-1, -2)))
    return {"overall": round(100.0 * (1.0 - float(mask.float().mean())), 3),
            "per_head": [[round(float(z), 3) for z in row] for row in zeros.reshape(-1, zeros.shape[-1])]
            if mask.dim() == 4 else [round(float(z), 3) for z in zeros],
            "length": int(mask.shape[-1])}


def write_heatmaps(mask: torch.Tensor, directory: str | Path) -> list[Path]:
    """One PNG per head (black = attend) and `grid.png` with every head; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sets = mask if mask.dim() == 4 else mask[None]
    per_layer = mask.dim() == 4
    written = []
    for s, heads in enumerate(sets):
        for h, head in enumerate(heads):
            name = f"layer_{s:02d}_head_{h:02d}.png" if per_layer else f"head_{h:02d}.png"
            fig, ax = plt.subplots(figsize=(4, 4))
            _draw(ax, head, f"{'layer %d ' % s if per_layer else ''}head {h}")
            ax.set_xlabel("key j")
            ax.set_ylabel("query i")
            fig.tight_layout()
            fig.savefig(directory / name, dpi=100)
            plt.close(fig)
            written.append(directory / name)
    rows, cols = sets.shape[0], sets.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for s in range(rows):
        for h in range(cols):
            _draw(axes[s][h], sets[s, h], f"{'L%d ' % s if per_layer else ''}head {h}")
            axes[s][h].set_xticks([])
            axes[s][h].set_yticks([])
    fig.tight_layout()
    fig.savefig(directory / "grid.png", dpi=100)
    plt.close(fig)
    written.append(directory / "grid.png")
    return written


def _draw(ax: Any, head: torch.Tensor, title: str) -> None:
    zeros = 100.0 * (1.0 - float(head.float().mean()))
    ax.imshow(head.cpu().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{title}: {zeros:.1f}% sparse", fontsize=8)
