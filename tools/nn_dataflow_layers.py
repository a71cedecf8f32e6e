"""Schedule layers one at a time with nn-dataflow 2.1 (row-stationary, Eyeriss) and print the costs.

Runs inside nn-dataflow's own virtual environment (it pins sympy 1.5.1; torch needs a newer one),
so it imports nothing from dkm. Reads JSON from stdin, {"bits": b, "layers": [{name, kind, batch,
c_in, c_out, in_size, out_size, kernel, stride}, ...]} (sizes as [h, w];
`dkm.energy.references.nn_dataflow`
writes it); prints one JSON object per layer: MACs, accesses per level and data type, cost.

The configuration is the one of nn-dataflow's test `test_eyeriss_isca16` (tests/dataflow_test/
test_nn_dataflow.py): one 16×16 PE array, a 128 kB global buffer, a 512 B register file per PE,
costs MAC 1 / RF 1 / array 2 / buffer 6 / DRAM 200 per word, default Option() (minimal energy).
A word is `bits` wide, as the `--word` option of nn-dataflow's own tools/nn_dataflow_search.py:
the buffer then holds 128 kB / (bits/8) words; the costs stay per word, in units of one MAC at
that width.
"""

import json
import sys
import time

from nn_dataflow.core import (
    ConvLayer,
    Cost,
    FCLayer,
    InputLayer,
    MapStrategyEyeriss,
    Network,
    NNDataflow,
    NodeRegion,
    Option,
    PhyDim2,
    Resource,
)
from nn_dataflow.core import DataCategoryEnum as de
from nn_dataflow.core import MemHierEnum as me
from nn_dataflow.version import __version__

COST = Cost(mac_op=1, mem_hier=(200, 6, 2, 1), noc_hop=0, idl_unit=0)
LEVELS = {"dram": me.DRAM, "buffer": me.GBUF, "array": me.ITCN, "rf": me.REGF}
DATA = {"weights": de.FIL, "inputs": de.IFM, "psums": de.OFM}


def resource(bits):
    """The test's Eyeriss resource, buffer and RF sizes in `bits`-wide words."""
    word = (bits + 7) // 8
    region = {
        t: NodeRegion(origin=PhyDim2(0, 0), dim=PhyDim2(1, 1), type=NodeRegion.DRAM)
        for t in ("dram_region", "src_data_region", "dst_data_region")
    }
    proc = NodeRegion(origin=PhyDim2(0, 0), dim=PhyDim2(1, 1), type=NodeRegion.PROC)
    return Resource(
        proc_region=proc,
        dim_array=PhyDim2(16, 16),
        size_gbuf=128 * 1024 // word,
        size_regf=512 // word,
        array_bus_width=float("inf"),
        dram_bandwidth=float("inf"),
        no_time_mux=False,
        **region,
    )


def network(d):
    """A network of one layer: its input, then the conv (or FC as a conv on a 1×1 map)."""
    net = Network(d["name"])
    if d["kind"] == "linear":
        net.set_input_layer(InputLayer(d["c_in"], 1))
        net.add(d["name"], FCLayer(d["c_in"], d["c_out"], 1))
    else:
        net.set_input_layer(InputLayer(d["c_in"], tuple(d["in_size"])))
        conv = ConvLayer(
            d["c_in"], d["c_out"], tuple(d["out_size"]), tuple(d["kernel"]), tuple(d["stride"])
        )
        net.add(d["name"], conv)
    return net


def schedule(d, bits):
    """The minimal-energy schedule of one layer: ops, accesses per level and data type, cost."""
    t0 = time.perf_counter()
    nnd = NNDataflow(network(d), d["batch"], resource(bits), COST, MapStrategyEyeriss)
    tops, _ = nnd.schedule_search(Option())
    if not tops:
        raise RuntimeError(f"nn-dataflow found no schedule for layer {d['name']}")
    sr = tops[0][d["name"]]
    row = {"name": d["name"], "ops": sr.total_ops, "cost": sr.total_cost}
    for lv, i in LEVELS.items():
        for dt, j in DATA.items():
            row[f"{lv}_{dt}"] = sr.scheme["access"][i][j]
        row[lv] = sr.total_accesses[i]
    row["time_cycles"] = sr.total_time
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    row["nn_dataflow_version"] = __version__
    return row


def main():
    job = json.load(sys.stdin)
    for d in job["layers"]:
        print(json.dumps(schedule(d, job["bits"])), flush=True)


if __name__ == "__main__":
    main()
