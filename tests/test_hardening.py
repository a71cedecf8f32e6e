"""Issue 14: never clobber a path, one clear error for every bad input, nothing left behind."""

import os
import stat
import warnings

import pytest
import torch

from dkm import io as _io
from dkm.app.cli import main
from dkm.export.dkmfile import ExportFormatError, load_shared, save_shared
from dkm.sharing import share
from dkm.training.checkpoint import save_atomic
from dkm.training.models import small_cnn


def _make(kind: str, path):
    """Put a `kind` of file system entry at `path`."""
    if kind == "symlink":
        target = path.parent / "target.txt"
        target.write_text("keep me")
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # another /dev/null


def _snapshot(path):
    st = os.lstat(path)
    return st.st_mode, st.st_ino, st.st_rdev


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "device"])
@pytest.mark.parametrize("writer", ["write_atomic", "save_atomic"])
def test_atomic_writers_refuse_what_is_not_a_regular_file(tmp_path, kind, writer):
    path = tmp_path / "out"
    _make(kind, path)
    before = _snapshot(path)
    with pytest.raises(_io.UnsafePathError, match=f"{path}.*{kind}"):
        if writer == "write_atomic":
            _io.write_atomic(path, b"data")
        else:
            save_atomic({"x": 1}, path)
    assert _snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out"] + (["target.txt"] if kind == "symlink" else [])
    )
    if kind == "symlink":
        assert (tmp_path / "target.txt").read_text() == "keep me"


def test_atomic_writer_replaces_a_regular_file_and_creates_a_new_one(tmp_path):
    _io.write_atomic(tmp_path / "a.txt", "one")
    _io.write_atomic(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("case", ["parent_is_a_file", "name_too_long"])
def test_atomic_writer_os_errors_name_the_path_and_leave_nothing(tmp_path, case):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "out" if case == "parent_is_a_file" else tmp_path / ("n" * 300)
    with pytest.raises(_io.WriteError, match="cannot write") as err:
        _io.write_atomic(path, "data")
    assert isinstance(err.value, ValueError) and str(path) in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_atomic_writer_removes_its_temp_file_when_writing_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with _io.atomic_open(tmp_path / "x.bin") as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_unique_and_never_a_users_file(tmp_path):
    (tmp_path / "results.tmp").write_text("a user's file")
    (tmp_path / ".results.csv.tmp").write_text("another user's file")
    _io.write_atomic(tmp_path / "results.csv", "a,b\n")
    assert (tmp_path / "results.tmp").read_text() == "a user's file"
    assert (tmp_path / ".results.csv.tmp").read_text() == "another user's file"


def test_stale_temps_of_a_killed_writer_are_found_and_removed(tmp_path):
    stale = tmp_path / ".model.pt.abc123.tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "model.tmp"
    keep.write_bytes(b"a user's file")
    _io.remove_stale_temps(tmp_path)
    assert not stale.exists() and keep.exists()


# ---------------------------------------------------------------- export (items 1, 10, 14)
def _shared_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    net = small_cnn(width=4).to(dtype)
    return net, share(net, 4, kmeans_seed=0)


def test_export_refuses_a_device_file(tmp_path):
    net, shared = _shared_cnn()
    path = tmp_path / "null"
    _make("device", path)
    with pytest.raises(_io.UnsafePathError, match="device"):
        save_shared(net, shared, path)
    assert stat.S_ISCHR(os.lstat(path).st_mode)


def test_load_shared_on_a_directory_or_a_missing_file_is_one_clear_error(tmp_path):
    net, shared = _shared_cnn()
    with pytest.raises(ExportFormatError, match="is a directory"):
        load_shared(tmp_path, small_cnn(width=4))
    with pytest.raises(ExportFormatError, match="no such file"):
        load_shared(tmp_path / "missing.dkm", small_cnn(width=4))


def test_float64_net_exports_and_reloads_bit_identically(tmp_path):
    net, shared = _shared_cnn(torch.float64)
    save_shared(net, shared, tmp_path / "n.dkm")
    back = small_cnn(width=4).to(torch.float64)
    result = load_shared(tmp_path / "n.dkm", back)
    for name, layer in result.layers.items():
        assert layer.codebook.dtype == torch.float64
        assert torch.equal(layer.codebook, shared.layers[name].codebook)
    for (k, a), b in zip(net.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_meta_device_net_is_one_clear_error(tmp_path):
    with torch.device("meta"):
        net = small_cnn(width=4)
    with pytest.raises(ValueError, match="meta device"):
        share(net, 4)
    real, shared = _shared_cnn()
    save_shared(real, shared, tmp_path / "n.dkm")
    with pytest.raises(ValueError, match="meta device"):
        load_shared(tmp_path / "n.dkm", net)


def test_share_says_when_it_shares_no_layer():
    torch.manual_seed(0)
    net = small_cnn(width=4)
    with pytest.warns(UserWarning, match="shares no conv"):
        result = share(net, 10**9)
    assert not result.layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        share(net, 4)


def test_non_finite_weight_is_named_by_its_layer_name():
    torch.manual_seed(0)
    net = small_cnn(width=4)
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"conv {name!r}"):
        share(net, 4)


def test_tied_convs_are_shared_once():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    net[2].weight = net[0].weight
    result = share(net, [4, 2], kmeans_seed=0)
    assert list(result.layers) == ["0"] and "ties its weight to '0'" in result.skipped["2"]
    assert result.layers["0"].num_clusters == 4
    assert torch.equal(net[2].weight, result.layers["0"].weight())


# ---------------------------------------------------------------- command line (items 5, 7)
def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


SHARE = ["share", "--profile", "smoke", "--target-cr", "8"]


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo", "device"])
def test_cli_export_to_what_is_not_a_file_is_refused_before_any_work(dirs, capsys, kind):
    path = dirs / "out.dkm"
    _make(kind, path)
    before = _snapshot(path)
    assert main([*SHARE, "--export", str(path)]) == 2
    _one_line_error(capsys, "--export", str(path), kind)
    assert _snapshot(path) == before and not (dirs / "runs").exists()


@pytest.mark.parametrize("export", ["", "   ", "n" * 300])
def test_cli_export_empty_or_over_long_is_one_line(dirs, capsys, export):
    assert main([*SHARE, "--export", export]) == 2
    _one_line_error(capsys, "--export")
    assert not (dirs / "runs").exists()


def test_cli_evaluate_has_no_export_and_sweep_needs_a_method(dirs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--profile", "smoke", "--target-cr", "8", "--export", "x.dkm"])
    assert exit_.value.code == 2 and "--export" in capsys.readouterr().err
    assert main(["sweep", "--profile", "smoke", "--methods", ","]) == 2
    _one_line_error(capsys, "--methods", "names no method")
    assert not (dirs / "runs").exists()


def test_cli_lam_only_on_the_commands_that_retrain(dirs, capsys):
    """λ reaches re-training only: `pretrain --lam` is refused (it was accepted and ignored)."""
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--profile", "smoke", "--lam", "2"])
    assert exc.value.code == 2 and "unrecognized arguments: --lam 2" in capsys.readouterr().err
    for command in ("retrain", "share", "evaluate", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--lam LAM" in capsys.readouterr().out, command


def test_cli_unwritable_run_cache_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path / "file" / "runs"))
    assert main(["pretrain", "--profile", "smoke"]) == 2
    _one_line_error(capsys, "DKM_RUNS_DIR", "cannot")


def test_unwritable_results_table_names_it_and_says_the_result_is_kept(tmp_path):
    from dkm.experiments import sweep as sw

    (tmp_path / "file").write_text("x")
    with pytest.raises(_io.WriteError, match="DKM_RESULTS_DIR.*cached in the run directories"):
        sw.write_results(tmp_path / "file" / "sweep_x.csv", [])


# ---------------------------------------------------------------- data and training (10, 11)
@pytest.mark.parametrize("kind", ["empty directory", "file"])
def test_a_set_but_unusable_data_dir_is_an_error(tmp_path, monkeypatch, kind):
    from dkm.training import data

    place = tmp_path / "place"
    place.mkdir() if kind == "empty directory" else place.write_text("x")
    monkeypatch.setenv(data.ENV_VAR, str(place))
    with pytest.raises(data.DatasetNotFoundError, match=rf"\$DKM_DATA_DIR={place} holds no"):
        data.find_fashion_mnist()


def test_a_diverging_run_is_reported_as_diverged():
    from dkm.regularizer import KMeansRegularizer
    from dkm.training.loop import TrainConfig, TrainingDivergedError, train

    torch.manual_seed(0)
    net = small_cnn(width=4)
    X, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    reg = KMeansRegularizer(net, lam=1e30, num_clusters=2, mode="indicator", refresh_every=1)
    config = TrainConfig(batch_size=16, log_every=1, device="cpu")
    with pytest.raises(TrainingDivergedError, match="diverged at step .*λ"):
        train(net, torch.utils.data.TensorDataset(X, y), config, regularizer=reg)


def _rewrite_meta(path, edit):
    """Rewrite the metadata of an export file with `edit(meta)`, keeping a valid prefix and CRC."""
    import json
    import zlib

    from dkm.export.dkmfile import _PREFIX, MAGIC, VERSION

    data = path.read_bytes()
    _, _, meta_len, payload_len, _ = _PREFIX.unpack_from(data)
    body = data[_PREFIX.size :]
    meta = edit(json.loads(zlib.decompress(body[:meta_len])))
    meta_bytes = zlib.compress(json.dumps(meta).encode())
    payload = body[meta_len:]
    crc = zlib.crc32(payload, zlib.crc32(meta_bytes))
    path.write_bytes(
        _PREFIX.pack(MAGIC, VERSION, len(meta_bytes), payload_len, crc) + meta_bytes + payload
    )


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: [m], "a JSON list, allowed a JSON object"),
        (lambda m: {**m, "layers": [{**m["layers"][0], "K": 0}]}, "has K=0: allowed 1 ≤ K ≤ N="),
    ],
)
def test_load_shared_metadata_that_is_a_list_or_k0_is_one_clear_error(tmp_path, edit, match):
    net, shared = _shared_cnn()
    save_shared(net, shared, tmp_path / "n.dkm")
    _rewrite_meta(tmp_path / "n.dkm", edit)
    with pytest.raises(ExportFormatError, match=match):
        load_shared(tmp_path / "n.dkm", small_cnn(width=4))


# ---------------------------------------------------------------- issue 37: S1, S2
def _tiny_executed(directory):
    import nbformat

    from dkm.app.runner import NOTEBOOKS

    directory.mkdir()
    for name in NOTEBOOKS:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}")]
        nbformat.write(nb, directory / f"{name}.ipynb")
    return directory


@pytest.mark.parametrize(
    "entry", ["index.html", "mathjax/tex-svg.js", "01_spectral_relaxation.html", "mathjax"]
)
def test_the_book_never_writes_through_a_link(tmp_path, entry):
    from dkm.app import book

    executed = _tiny_executed(tmp_path / "executed")
    out = tmp_path / "site"
    (out / "mathjax").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.js"
    victim.write_text("keep me")
    link = out / entry
    if entry == "mathjax":
        (out / "mathjax").rmdir()
        link.symlink_to(outside, target_is_directory=True)
    else:
        link.symlink_to(victim)
    with pytest.raises(_io.UnsafePathError, match="is a symlink: refusing"):
        book.build_book("smoke", executed=executed, out_dir=out)
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == [
        "victim.js"
    ]


def test_an_executed_notebook_is_never_written_through_a_link(tmp_path, monkeypatch):
    import papermill

    from dkm.app import runner

    written = []

    def fake_execute(source, output, **kwargs):  # papermill writes its output after each cell
        written.append(output)
        with open(output, "w") as f:
            f.write('{"executed": true}')

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.ipynb"
    victim.write_text("keep me")
    (out / "01_spectral_relaxation.ipynb").symlink_to(victim)
    with pytest.raises(_io.UnsafePathError, match="is a symlink: refusing"):
        runner.run_notebook("01_spectral_relaxation", "smoke", out, tmp_path / "figs")
    assert victim.read_text() == "keep me" and not written  # refused before any work
    path = runner.run_notebook("02_retraining", "smoke", out, tmp_path / "figs")
    assert path.read_text() == '{"executed": true}' and path == out / "02_retraining.ipynb"
    assert written and not written[0].startswith(str(out))  # papermill wrote elsewhere


# ---------------------------------------------------------------- issue 37: H1, fifos never hang
@pytest.fixture
def no_hang():
    """Fail instead of hanging: SIGALRM after 10 s."""
    import signal

    def fail(*_):
        raise TimeoutError("a read blocked on a fifo")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_where_a_file_is_read_is_refused_not_waited_on(tmp_path, no_hang):
    from dkm.app import book
    from dkm.energy.shares import make_shares
    from dkm.experiments import cache, platform
    from dkm.experiments import sweep as sw

    def fifo(name):
        path = tmp_path / name
        os.mkfifo(path)
        return path

    with pytest.raises(_io.UnsafePathError, match="x is a fifo: refusing to read it"):
        _io.read_bytes(fifo("x"))
    with pytest.raises(cache.RunError, match="done.json is corrupt .*is a fifo"):
        cache.load_json(fifo("done.json"))  # config.json, done.json, result.json, side files
    with pytest.raises(_io.UnsafePathError, match="is a fifo"):
        sw.read_table(fifo("sweep_x.csv"), sw.COLUMNS, "sweep")
    fifo("table.platform.json")
    with pytest.raises(_io.UnsafePathError, match="is a fifo"):
        platform.recorded(tmp_path / "table.csv")
    with pytest.raises(_io.UnsafePathError, match="is a fifo"):
        load_shared(fifo("net.dkm"), small_cnn())
    with pytest.raises(_io.UnsafePathError, match="is a fifo"):
        make_shares([], str(fifo("shares.json")))  # `dkm energy --shared FILE`
    executed = _tiny_executed(tmp_path / "executed")
    (executed / "03_cluster_assignments.ipynb").unlink()
    fifo("executed/03_cluster_assignments.ipynb")
    with pytest.raises(book.BookError, match="no executed notebook"):
        book.build_book("smoke", executed=executed, out_dir=tmp_path / "site")


def test_a_full_disk_during_a_model_save_is_one_write_error(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.zeros(2)}, path)
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                           "writing file data/0: file write failed\nmore lines")  # fmt: skip

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(_io.WriteError, match=r"cannot write .*model.pt: .*file write failed$"):
        save_atomic({"w": torch.ones(2)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt"
    ]  # the old file kept, no temp left


# ---------------------------------------------------------------- issue 37: the low items
@pytest.mark.parametrize(
    "text, match",
    [
        ("run_key,profile\n1,cpu\n", "has columns"),
        (None, "line 2: a damaged row"),  # a value that is not a number
        (None, "line 3: a damaged row"),  # a field missing
        (b"\xff\xfe not text", "not a readable CSV table"),
    ],
)
def test_a_damaged_results_table_is_named_with_its_line(tmp_path, text, match):
    from dkm.experiments import sweep as sw

    path = tmp_path / "sweep_x.csv"
    header = ",".join(sw.COLUMNS)
    row = "k,cpu,plain,45x,28.56,0,,top1,0.9"
    if text is None:
        bad = row.replace("0.9", "zz") if "line 2" in match else "k,cpu,plain"
        text = f"{header}\n{bad}\n" if "line 2" in match else f"{header}\n{row}\n{bad}\n"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    with pytest.raises(sw.ResultsFormatError, match=match) as err:
        sw.read_results(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("var", ["DKM_RUNS_DIR", "DKM_RESULTS_DIR"])
def test_an_empty_directory_variable_is_an_error_not_the_current_directory(
    tmp_path, monkeypatch, capsys, var
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, "")
    assert main(["sweep", "--profile", "smoke"]) == 2
    _one_line_error(capsys, f"${var} is set but empty")
    assert not list(tmp_path.iterdir())  # nothing written in the current directory


def test_cli_energy_empty_csv_is_refused(capsys):
    assert main(["energy", "--model", "alexnet", "--csv", ""]) == 2
    _one_line_error(capsys, "--csv", "give a file path")


def test_stale_temps_of_a_killed_writer_beside_tables_and_side_files_are_removed(tmp_path):
    from dkm.experiments import cache as runs
    from dkm.experiments import sweep as sw

    table = tmp_path / "sweep_x.csv"
    stray = [tmp_path / ".sweep_x.csv.k1ll3d.tmp", tmp_path / ".sweep_x.platform.json.k1.tmp"]
    for path in stray:
        path.write_text("half")
    sw.write_results(table, [], {"cpu": "x"})
    assert not any(p.exists() for p in stray) and table.exists()
    side = tmp_path / "run" / "test_accuracy_5.json"
    side.parent.mkdir()
    (side.parent / ".test_accuracy_5.json.abc.tmp").write_text("half")
    assert runs.side_file(side, ("accuracy",), lambda: {"accuracy": 0.5})["accuracy"] == 0.5
    assert sorted(p.name for p in side.parent.iterdir()) == ["test_accuracy_5.json"]


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo", "device"])
def test_cli_energy_csv_to_what_is_not_a_file_is_refused_before_any_work(tmp_path, capsys, kind):
    """The audit's family "special files in every output option": --csv of `dkm energy` (--export
    of `dkm share`, --out-dir of `dkm figures` and `dkm book` and the results tables above)."""
    path = tmp_path / "out.csv"
    _make(kind, path)
    before = _snapshot(path)
    assert main(["energy", "--model", "alexnet", "--csv", str(path)]) == 2
    _one_line_error(capsys, "--csv", str(path), kind)
    assert _snapshot(path) == before
    if kind == "symlink":
        assert (tmp_path / "target.txt").read_text() == "keep me"


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo", "device"])
def test_a_results_table_that_is_not_a_file_is_refused_and_left(tmp_path, kind):
    from dkm.experiments import sweep as sw

    path = tmp_path / "sweep_x.csv"
    _make(kind, path)
    before = _snapshot(path)
    with pytest.raises((_io.WriteError, _io.UnsafePathError, sw.ResultsFormatError, OSError)):
        sw.write_results(path, [])
    assert _snapshot(path) == before
    if kind == "symlink":
        assert (tmp_path / "target.txt").read_text() == "keep me"
