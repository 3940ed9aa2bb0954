"""Distillation: losses (hard MLM, logit KD, hidden-state and attention matching) and teacher helpers.

Submodules are imported on demand (`from bort.distill.losses import DistillationLoss`).
"""
