"""Training: optimisers, learning-rate schedules and the loop.

Submodules are imported on demand (`from bort.train.optim import build_optimizer`).
"""
