"""Step 4's energy-aware metric (paper §4) and its references: the energy wing.

Holds the metric (`metric`: full-adder-equivalent arithmetic plus data movement through a memory
hierarchy), accelerators as data (`accelerators`), the layer inventory of a net (`inventory`), how
a net is shared as the metric reads it (`shares`), and the independent references it is validated
against (`references`: ZigZag, nn-dataflow, the validation table).

May import: the core (`dkm.*` top-level modules), `dkm.io`, `dkm.training` (models, for WRN-16-4's
shapes). Imported by: `dkm.experiments`, `dkm.viz`, `dkm.app`.

The names below are the wing's face: `from dkm import energy` then `energy.net_energy(...)`.
"""

from dkm.energy.accelerators import (
    ACCELERATORS,
    EYERISS,
    LEVELS,
    Accelerator,
    accesses,
    get_accelerator,
    rs_accesses,
    rs_mapping,
)
from dkm.energy.inventory import LayerInfo, layer_inventory
from dkm.energy.metric import (
    ACCESS_COST,
    COMPONENTS,
    FA_PER_MAC16,
    UNIT,
    WORD_BITS,
    accumulator_bits,
    compare_energy,
    expected_distinct,
    layer_energy,
    net_energy,
    shared_mults,
    totals,
    weight_storage_bits,
    wrn_sharing_table,
)
from dkm.energy.shares import Share, authors_shares, auto_shares, make_shares, plan_shares

__all__ = [
    "ACCELERATORS", "EYERISS", "LEVELS", "Accelerator", "accesses", "get_accelerator",
    "rs_accesses", "rs_mapping",
    "LayerInfo", "layer_inventory", "ACCESS_COST", "WORD_BITS", "accumulator_bits", "COMPONENTS",
    "FA_PER_MAC16",
    "UNIT", "compare_energy", "expected_distinct", "layer_energy", "net_energy", "shared_mults",
    "totals", "weight_storage_bits", "wrn_sharing_table", "Share", "authors_shares", "auto_shares",
    "make_shares", "plan_shares",
]  # fmt: skip
