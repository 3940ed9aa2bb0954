"""Training infrastructure shared by every recipe.

- `settings`: the `Settings` base of the recipes' settings dataclasses (declared checks, one validation);
- `recipe`: the `Recipe` base (`setup → train → cleanup`, output directory claimed in setup);
- `optim`, `schedule`: optimisers (AdamW, the original "bertadam"), weight-decay groups, warmup/decay;
- `sampler`, `distributed`: the global batch plan and torchrun/MPI launch;
- `checkpointing`, `resume`, `run_dir`: atomic checkpoints, resume checks, owned output directories;
- `metrics`: JSON-lines logging (optionally TensorBoard) and the plots.

The loops themselves live with their recipes (`bort.distill.recipe`, `bort.finetune.trainer`,
`bort.lra.runner`, `bort.search.runner`). Submodules are imported on demand
(`from bort.train.optim import build_optimizer`).
"""
