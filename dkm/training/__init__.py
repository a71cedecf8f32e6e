"""Training: the loop (pre-training and re-training with the regularizer), data, models,
evaluation with batch-norm re-estimation, checkpoints, data-parallel runs (torchrun/DDP), thread
and allocator settings.

May import: the core, dkm.io. Imported by: dkm.energy (models), dkm.experiments, dkm.viz, dkm.app.
"""
