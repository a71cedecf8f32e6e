"""The energy metric's independent references: ZigZag (`zigzag`), nn-dataflow's
row-stationary Eyeriss (`nn_dataflow`), and the per-layer R² validation table (`validation`);
`common` holds what they share (reading and writing reference CSVs).

May import: the core, dkm.io, dkm.training (models), dkm.energy. Imported by: dkm.experiments,
dkm.viz, dkm.app.
"""
