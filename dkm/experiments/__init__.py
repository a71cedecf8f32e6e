"""Experiments: profiles (how big each run is), the run cache (`cache`: one directory per
configuration, verified when read), the pipeline (pretrain → retrain → share → evaluate), the one
place plans are made (`planning`), the sweep and the budget × λ study with what their tables say
(`verdicts`), their Ray engine, the platform each table records (`platform`), and the
energy-savings table.

May import: the core, dkm.io, dkm.training, dkm.export, dkm.energy. Imported by: dkm.viz, dkm.app.
"""
