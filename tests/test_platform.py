"""The platform beside each results table: parsed from /proc/cpuinfo text, written with the table,
compared before rows of another machine are merged, and announced once by `dkm figures`."""

import pytest

from dkm.app import cli
from dkm.experiments import platform
from dkm.experiments import sweep as sw

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx avx2 fma

processor\t: 1
vendor_id\t: ignored
"""
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 fma", "avx2 fma avx512f")


def test_the_platform_is_read_from_the_first_processor():
    info = platform.current(threads=2, memory_format="channels_last", cpuinfo_text=ZEN3)
    cpu = (info["cpu_vendor"], info["cpu_family"], info["cpu_model"])
    assert cpu == ("AuthenticAMD", "25", "1")
    assert info["isa"] == ["sse4_2", "avx", "avx2", "fma"]
    assert (info["threads"], info["memory_format"]) == (2, "channels_last")
    assert set(platform.KEY_FIELDS) <= set(info)
    info["numerics"] = "native-avx2"
    other = platform.current(threads=2, memory_format="channels_last", cpuinfo_text=ZEN4)
    other["numerics"] = "native-avx512"
    assert platform.differences(info, other) == [
        "numerics: native-avx2 ≠ native-avx512",
        "cpu_model: 1 ≠ 17",
        "isa: ['sse4_2', 'avx', 'avx2', 'fma'] ≠ ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f']",
    ]
    assert platform.differences(info, dict(info)) == []


def test_two_cpu_types_pinned_to_avx2_are_one_platform():
    zen3, zen4 = (platform.current(2, "channels_last", text) for text in (ZEN3, ZEN4))
    zen3["numerics"] = zen4["numerics"] = "avx2"
    zen4["torch_cpu_capability"] = "AVX2"
    assert platform.differences(zen3, zen4) == []  # the CPU fields are recorded, not compared
    assert platform.differences(zen3, zen4 | {"threads": 1}) == ["threads: 2 ≠ 1"]
    native = zen4 | {"numerics": "native-avx512"}
    assert platform.differences(zen3, native)[:2] == ["numerics: avx2 ≠ native-avx512",
                                                      "cpu_model: 1 ≠ 17"]  # fmt: skip


def _row(key):
    return {c: "1" for c in sw.COLUMNS} | {"run_key": key}


def test_the_table_records_its_platform_and_refuses_rows_of_another(tmp_path):
    path = tmp_path / "sweep_x.csv"
    here = platform.current(2, "contiguous", ZEN3) | {"numerics": "native-avx2"}
    sw.write_results(path, [_row("a")], here)
    assert platform.sidecar(path) == tmp_path / "sweep_x.platform.json"
    assert platform.recorded(path) == here
    sw.add_results(path, [_row("b")], here)  # the same machine: merged
    zen4 = platform.current(2, "contiguous", ZEN4) | {"numerics": "native-avx512"}
    before = path.read_bytes()
    with pytest.raises(ValueError, match="was computed on AMD EPYC .*cpu_model: 1 ≠ 17"):
        sw.add_results(path, [_row("c")], zen4)
    assert path.read_bytes() == before and platform.recorded(path) == here
    sw.write_results(path, [_row("c")], zen4)  # a whole run
    assert platform.recorded(path)["cpu_model"] == "17"


def test_figures_says_once_when_this_machine_is_not_the_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path))
    profile = cli.get_profile("cpu")
    table = sw.results_path(profile)
    assert cli._platform_notice("cpu") is None  # no table yet: nothing to compare
    sw.write_results(table, [_row("a")], platform.of_profile(profile))
    assert cli._platform_notice("cpu") is None  # this machine's own table
    here = platform.of_profile(profile)
    platform.write(table, here | {"cpu_model": "elsewhere", "numerics": "avx2"})
    assert (cli._platform_notice("cpu") is None) == (here["numerics"] == "avx2")  # both pinned
    platform.write(table, here | {"cpu_model": "elsewhere", "numerics": "native-avx512"})
    notice = cli._platform_notice("cpu")
    assert notice.startswith("note: the committed results were computed on ")
    assert "numerics: native-avx512 ≠" in notice and "expect other numbers" in notice


def test_a_table_of_an_unrecorded_platform_is_announced_without_a_diff(tmp_path, monkeypatch):
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path))
    table = sw.results_path(cli.get_profile("cpu"))
    sw.write_results(table, [_row("a")], platform.unrecorded("before 0.2.0"))
    notice = cli._platform_notice("cpu")
    assert notice.startswith("note: the committed results were computed on an unrecorded platform;")
    assert "≠" not in notice and platform.recorded(table)["note"] == "before 0.2.0"


def _load_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "cross_platform.py"
    spec = importlib.util.spec_from_file_location("cross_platform", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cross_platform_tool_writes_both_tables_in_points(tmp_path, capsys):
    tool = _load_tool()

    def rows(values):  # (method, seed) -> top-1 after BN
        return [_row(f"{m}{s}") | {"method": m, "setting": "45x", "target_cr": "28.56",
                                   "seed": str(s), "metric": "top1_bn", "value": str(v)}
                for (m, s), v in values.items()]  # fmt: skip

    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    sw.write_results(a, rows({("deep_compression", 0): 0.88, ("dkm-indicator", 0): 0.86}))
    dc, dkm = "deep_compression", "dkm-indicator"
    sw.write_results(b, rows({(dc, 0): 0.87, (dkm, 0): 0.86, (dc, 1): 0.90, (dkm, 1): 0.87}))
    assert tool.main([f"one={a}", f"two={b}", "--out-dir", str(tmp_path)]) == 0
    compared = (tmp_path / "cross_platform_sweep_cpu.csv").read_text().splitlines()
    assert "two - one,top1_bn,deep_compression,45x,28.56,1,-1.00,1.00" in compared
    gaps = (tmp_path / "paired_gaps_sweep_cpu.csv").read_text().splitlines()
    assert gaps[1].startswith("deep_compression,dkm-indicator,45x,28.56,3,2.00,")  # 2, 1, 3
    for bad in (["one=" + str(a)], [f"one={a}", "two=/no/such.csv"], [f"one={a}", f"two={b}",
                "--gaps", "deep_compression-nothing"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            tool.main(bad + ["--out-dir", str(tmp_path)])
        assert exit_.value.code == 2
    assert "two or more tables" in capsys.readouterr().err


def test_a_table_of_another_platform_is_named_once_by_the_notebooks(tmp_path):
    profile = cli.get_profile("cpu")
    table = tmp_path / "study_cpu.csv"
    assert platform.elsewhere(table, profile) is None  # nothing recorded
    here = platform.of_profile(profile)
    platform.write(table, here)
    assert platform.elsewhere(table, profile) is None
    platform.write(table, here | {"numerics": "native-avx512", "cpu_name": "Other CPU"})
    note = platform.elsewhere(table, profile)
    assert note.startswith("note: study_cpu.csv was computed on Other CPU")
    assert "numeric path native-avx512" in note and "not on this machine" in note
