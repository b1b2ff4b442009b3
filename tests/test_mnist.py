"""MNIST-family data: the IDX reader, the md5-checked download, bad files, and real-data accuracy.

Every test makes its own tiny IDX files; only the last one reads the real MNIST, when present.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gdtrain.cli import app
from gdtrain.components import idx
from gdtrain.components.datasets import build_dataset
from gdtrain.core.config import validate
from gdtrain.training import memory, recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def idx_bytes(array: torch.Tensor) -> bytes:
    """A uint8 tensor as an IDX file: magic 0x08 (ubyte) + ndim, big-endian sizes, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def make_set(root: Path, name: str = "mnist", n_train: int = 120, n_test: int = 30, gz: bool = True) -> Path:
    """Write a tiny learnable set: class c is a bright 4-pixel-tall bar at row 2c + noise."""
    folder = idx.raw_folder(name, root)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 40, (n, 28, 28), generator=g)
        for i, c in enumerate(labels.tolist()):
            images[i, 2 * c + 2 : 2 * c + 6, 4:24] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            path = folder / f"{prefix}-{kind}-ubyte"
            if gz:
                path.with_suffix(".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
    return folder


def mnist_config(root: Path, **data) -> dict:
    return {
        "experiment": {"name": "tiny_mnist"},
        "data": {"name": "mnist", "root": str(root), "val_size": 20, **data},
        "model": {"name": "linear"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "train": {"epochs": 3, "batch_size": 10, "loss": "cross_entropy", "log_every": 5},
    }


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: ")
    return line


def test_reader_gives_images_and_labels_as_written(tmp_path):
    make_set(tmp_path)
    train_x, train_y, test_x, test_y = idx.load("mnist", tmp_path)
    assert train_x.shape == (120, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (30, 28, 28)
    assert train_y.dtype == torch.int64 and train_y.tolist() == [i % 10 for i in range(120)]
    assert train_x[3, 8:12, 4:24].eq(250).all()  # label 3: bar at rows 8-11


def test_plain_and_gzipped_files_read_the_same(tmp_path):
    make_set(tmp_path / "gz", gz=True)
    make_set(tmp_path / "plain", gz=False)
    for a, b in zip(idx.load("mnist", tmp_path / "gz"), idx.load("mnist", tmp_path / "plain")):
        assert torch.equal(a, b)


def test_dataset_splits_validation_by_seed_and_keeps_the_test_set(tmp_path):
    make_set(tmp_path)
    data = build_dataset(validate(mnist_config(tmp_path), "test"))
    again = build_dataset(validate(mnist_config(tmp_path), "test"))
    other = build_dataset(validate({**mnist_config(tmp_path), "experiment": {"seed": 1}}, "test"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (100, 20, 30)
    assert data.x_train.shape[1] == 784 and data.x_train.dtype == torch.float32
    assert torch.equal(data.y_val, again.y_val) and not torch.equal(data.x_val, other.x_val)


@pytest.mark.parametrize(
    ("normalize", "low", "high"), [("none", 0, 250), ("unit", 0, 250 / 255), ("half", -1, 2 * 250 / 255 - 1)]
)
def test_normalisation_maps_pixels(tmp_path, normalize, low, high):
    make_set(tmp_path)
    data = build_dataset(validate(mnist_config(tmp_path, normalize=normalize), "test"))
    assert data.x_train.min().item() == pytest.approx(low) or data.x_train.min().item() >= low
    assert data.x_train.max().item() == pytest.approx(high)


def test_standard_normalisation_uses_the_dataset_mean_and_std(tmp_path):
    make_set(tmp_path)
    data = build_dataset(validate(mnist_config(tmp_path, normalize="standard"), "test"))
    assert data.x_train.max().item() == pytest.approx((250 / 255 - 0.1307) / 0.3081, rel=1e-5)


def test_training_on_image_files_logs_test_metrics(tmp_path):
    make_set(tmp_path / "data")
    run_dir, outcome = recipe.run(validate(mnist_config(tmp_path / "data"), "test"), tmp_path / "runs", quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert outcome.status == "finished"
    assert summary["final"]["accuracy/test"] >= 0.9  # the bars are easy to tell apart
    assert "loss/test" in summary["final"]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) >= {"loss/test", "accuracy/test"}


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    make_set(tmp_path / "elsewhere")
    monkeypatch.setenv("GDTRAIN_DATA", str(tmp_path / "elsewhere"))
    cfg = mnist_config(tmp_path)
    del cfg["data"]["root"]
    assert len(build_dataset(validate(cfg, "test")).x_test) == 30


def test_a_run_records_the_folder_it_read_so_its_rerun_reads_it_from_anywhere(tmp_path, monkeypatch):
    make_set(tmp_path / "shared")
    monkeypatch.setenv("GDTRAIN_DATA", str(tmp_path / "shared"))
    cfg = mnist_config(tmp_path)
    del cfg["data"]["root"]
    run_dir, _ = recipe.run(validate(cfg, "test"), tmp_path / "runs", quiet=True)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    assert recorded == str(tmp_path / "shared")
    monkeypatch.delenv("GDTRAIN_DATA")  # a fresh shell, in another folder
    monkeypatch.chdir(tmp_path / "runs")
    result = CliRunner().invoke(app, ["run", str(run_dir / "config.yaml"), "--runs-dir", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    relative = validate(mnist_config(Path("here")), "test").data.root
    assert relative == str(tmp_path / "runs" / "here")  # a relative root is the folder it named when read


def test_fashion_and_kmnist_use_torchvisions_folders(tmp_path):
    make_set(tmp_path, "fashion_mnist")
    make_set(tmp_path, "kmnist")
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    assert len(idx.load("fashion_mnist", tmp_path)[0]) == 120
    assert len(idx.load("kmnist", tmp_path)[0]) == 120


# --- bad files: one line, exit 2, no run folder ------------------------------------------------


def run_cli(tmp_path: Path, *overrides: str):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(mnist_config(tmp_path / "data")))  # JSON is YAML
    args = ["run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    return CliRunner().invoke(app, args)


def assert_no_run(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("summary.json"))


def test_missing_files_say_where_to_put_them_in_seconds(tmp_path):
    started = time.perf_counter()
    line = error_line(run_cli(tmp_path))
    assert time.perf_counter() - started < 10
    assert "train-images-idx3-ubyte" in line and str(tmp_path / "data" / "MNIST" / "raw") in line
    assert "gdtrain data download mnist" in line
    assert not (tmp_path / "runs").exists()  # checked before the run folder is made


def test_truncated_gzip_names_the_file(tmp_path):
    folder = make_set(tmp_path / "data")
    packed = folder / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:200])
    line = error_line(run_cli(tmp_path))
    assert str(packed) in line and "gzip" in line
    assert_no_run(tmp_path)


def test_garbage_gzip_names_the_file(tmp_path):
    folder = make_set(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    line = error_line(run_cli(tmp_path))
    assert "t10k-labels-idx1-ubyte.gz" in line
    assert_no_run(tmp_path)


def test_wrong_magic_number_names_the_file(tmp_path):
    folder = make_set(tmp_path / "data", gz=False)
    labels, images = folder / "train-labels-idx1-ubyte", folder / "train-images-idx3-ubyte"
    swapped = labels.read_bytes()
    labels.write_bytes(images.read_bytes())  # an images file where the labels should be
    images.write_bytes(swapped)
    line = error_line(run_cli(tmp_path))
    assert "magic number" in line and "train-" in line
    assert_no_run(tmp_path)


def test_file_shorter_than_its_header_says_is_rejected(tmp_path):
    folder = make_set(tmp_path / "data", gz=False)
    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    line = error_line(run_cli(tmp_path))
    assert str(images) in line and "truncated" in line


def test_image_and_label_counts_must_agree(tmp_path):
    folder = make_set(tmp_path / "data", gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(torch.arange(119) % 10))
    line = error_line(run_cli(tmp_path))
    assert "120 images" in line and "119 labels" in line


def test_validation_as_large_as_the_training_set_is_rejected(tmp_path):
    make_set(tmp_path / "data")
    line = error_line(run_cli(tmp_path, "data.val_size=120"))
    assert "data.val_size" in line and "0 training" in line
    assert_no_run(tmp_path)


# --- files too big to hold, and gzip bombs: refused from the headers, read no further than they say


def idx_header(*shape: int) -> bytes:
    """An IDX header alone: magic 0x08 (ubyte) + ndim, then the big-endian sizes."""
    return struct.pack(">HBB", 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def limit(monkeypatch, free: int) -> None:
    """The device has `free` bytes available."""
    monkeypatch.setattr(memory, "available", lambda device: (free, "patched"))


@pytest.fixture
def decompressed(monkeypatch) -> list[int]:
    """The sizes of what every GzipFile.read returned during the test: what was decompressed."""
    sizes: list[int] = []
    read = gzip.GzipFile.read

    def counted(self, size=-1):
        data = read(self, size)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counted)
    return sizes


def test_image_files_too_big_to_hold_are_refused_from_their_headers(tmp_path, monkeypatch):
    """100k well-formed images (a sparse file): ~0.6 GB as float32, more than the 200 MB free."""
    folder = make_set(tmp_path / "data", gz=False)
    images = folder / "train-images-idx3-ubyte"
    with open(images, "wb") as f:
        f.write(idx_header(100_000, 28, 28))
        f.truncate(16 + 100_000 * 28 * 28)  # sparse: no disk, and zero pixels if it were read
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_header(100_000) + bytes(100_000))
    limit(monkeypatch, 200_000_000)
    monkeypatch.setattr(idx, "read_idx", lambda *args: pytest.fail("the data was read"))
    line = error_line(run_cli(tmp_path))
    assert line.startswith("error: the data does not fit in memory: ") and str(images) in line
    assert "100000 + 30 images of 28×28 pixels" in line and "200 MB is available (patched)" in line
    assert line.endswith(f"lower the number of images in {folder} or the image size")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("shape", [(2**32 - 1, 28, 28), (2**31, 2**31, 4)], ids=["count", "int64-overflow"])
def test_a_header_claiming_a_huge_count_is_refused_at_the_real_limit(tmp_path, shape):
    """Headers alone; (2**31, 2**31, 4) is 2**64 bytes, which wraps to 0 in an int64 product."""
    folder = idx.raw_folder("mnist", tmp_path / "data")
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_header(*shape))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_header(shape[0]))
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_header(1, *shape[1:]))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_header(1))
    line = error_line(run_cli(tmp_path))
    assert "the data does not fit in memory" in line and f"{shape[0]} + 1 images" in line and "is available (" in line
    assert not (tmp_path / "runs").exists()


def test_a_gzip_bomb_is_decompressed_no_further_than_its_header_says(tmp_path, decompressed):
    """120 labels, then 64 MB of zeros that gzip packs into about 64 kB."""
    folder = make_set(tmp_path / "data")
    bomb = folder / "train-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(idx_bytes(torch.arange(120) % 10))
        for _ in range(64):
            f.write(bytes(1 << 20))
    line = error_line(run_cli(tmp_path))
    assert str(bomb) in line and "holds more than its header [120] gives 120 bytes" in line
    assert sum(decompressed) < 1_000_000  # the four small files, and one byte past the labels
    assert not (tmp_path / "runs").exists()


def packed_claiming(folder: Path, claimed: int) -> None:
    """The training files' headers claim `claimed` samples; the files hold 120."""
    for name, shape in (("train-images-idx3-ubyte.gz", (claimed, 28, 28)), ("train-labels-idx1-ubyte.gz", (claimed,))):
        path = folder / name
        payload = gzip.decompress(path.read_bytes())[len(idx_header(*shape)) :]
        path.write_bytes(gzip.compress(idx_header(*shape) + payload))


def test_a_gzip_claiming_more_than_fits_is_refused_from_its_header(tmp_path, monkeypatch, decompressed):
    folder = make_set(tmp_path / "data")
    packed_claiming(folder, 100_000)
    limit(monkeypatch, 200_000_000)
    line = error_line(run_cli(tmp_path))
    assert "the data does not fit in memory" in line and "100000 + 30 images" in line
    assert sum(decompressed) <= 2 * (16 + 8)  # the headers, each read once by the check
    assert not (tmp_path / "runs").exists()


def test_a_gzip_claiming_more_than_it_holds_is_truncated(tmp_path, monkeypatch, decompressed):
    """When the claim fits (10 GB free here), reading stops at the end of what is really there."""
    folder = make_set(tmp_path / "data")
    packed_claiming(folder, 100_000)
    limit(monkeypatch, 10_000_000_000)
    line = error_line(run_cli(tmp_path))
    assert str(folder / "train-images-idx3-ubyte.gz") in line and "truncated" in line
    assert sum(decompressed) < 200_000  # 120 images of 784 bytes, and the headers
    assert not (tmp_path / "runs").exists()


# --- download: against a local file server ------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the server's access log out of stderr
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server holding a tiny MNIST, and SOURCES pointing at it with its md5s."""
    served = make_set(tmp_path / "served")
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    dead = "http://127.0.0.1:9/"  # discard port: connection refused at once
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setitem(idx.SOURCES, "mnist", idx.Source("MNIST", (dead, url), md5s))
    yield served
    server.shutdown()


def test_download_tries_mirrors_in_turn_and_checks_md5(tmp_path, mirror):
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--root", str(tmp_path / "dl")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "dl" / "MNIST" / "raw"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in mirror.iterdir())
    for p in mirror.iterdir():
        assert (folder / p.name).read_bytes() == p.read_bytes()


def test_run_with_download_true_fetches_then_trains(tmp_path, mirror):
    result = run_cli(tmp_path, "data.download=true")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()


def test_bad_md5_leaves_no_file_under_the_real_name(tmp_path, mirror, monkeypatch):
    source = idx.SOURCES["mnist"]
    md5s = {**source.md5, "train-labels-idx1-ubyte.gz": "0" * 32}
    monkeypatch.setitem(idx.SOURCES, "mnist", idx.Source("MNIST", source.mirrors, md5s))
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--root", str(tmp_path / "dl")])
    line = error_line(result)
    assert "train-labels-idx1-ubyte.gz" in line and "md5" in line
    assert sorted(p.name for p in (tmp_path / "dl" / "MNIST" / "raw").iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_existing_files_are_never_downloaded_over(tmp_path, mirror):
    folder = tmp_path / "dl" / "MNIST" / "raw"
    folder.mkdir(parents=True)
    mine = folder / "train-images-idx3-ubyte"  # the user's own, uncompressed copy
    mine.write_bytes(b"user data")
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--root", str(tmp_path / "dl")])
    assert result.exit_code == 0
    assert mine.read_bytes() == b"user data"
    assert not (folder / "train-images-idx3-ubyte.gz").exists()


def test_offline_download_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(idx.SOURCES, "mnist", idx.Source("MNIST", ("http://127.0.0.1:9/",), idx.SOURCES["mnist"].md5))
    started = time.perf_counter()
    line = error_line(CliRunner().invoke(app, ["data", "download", "mnist", "--root", str(tmp_path)]))
    assert time.perf_counter() - started < 10
    assert "could not download" in line and str(tmp_path / "MNIST" / "raw") in line
    assert not any((tmp_path / "MNIST" / "raw").iterdir())  # no .part left behind


def test_unknown_dataset_for_download_is_rejected():
    result = CliRunner().invoke(app, ["data", "download", "cifar10"])
    assert result.exit_code == 2
    assert "mnist" in result.output


def test_shipped_checksums_are_the_upstream_ones():
    assert idx.SOURCES["mnist"].md5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    for source in idx.SOURCES.values():
        assert sorted(source.md5) == sorted(f"{stem}.gz" for stem in idx.FILES)
        assert all(len(h) == 32 for h in source.md5.values()) and source.mirrors


# --- the real MNIST, when it is beside the checkout ------------------------------------------------


@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found in ../shared/data")
def test_real_mnist_files_match_their_upstream_md5():
    for name, expected in idx.SOURCES["mnist"].md5.items():
        assert idx.md5(REAL_DATA / "MNIST" / "raw" / name) == expected


@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not found in ../shared/data")
def test_real_mnist_one_epoch_of_the_seeds_mlp(tmp_path):
    """One epoch of configs/mnist_adam.yaml (the full 10 epochs reach 97.5%+, see the README)."""
    from gdtrain.core.config import load_config

    cfg = load_config(CONFIGS / "mnist_adam.yaml", [f"data.root={REAL_DATA}", "train.epochs=1"])
    _, outcome = recipe.run(cfg, tmp_path, quiet=True)
    assert outcome.final["accuracy/test"] >= 0.93  # one epoch: about 94%


# --- the fast path: kernels and the benchmark ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kernel"),
    [("sgd", "fused"), ("adam", "fused"), ("adamw", "fused"), ("adagrad", "fused"), ("rmsprop", "foreach")],
)
def test_auto_takes_the_fastest_kernel_torch_has_on_cpu(name, kernel):
    from gdtrain.components.models import build_model
    from gdtrain.components.optimizers import build_optimizer

    cfg = validate({"optimizer": {"name": name}}, "test")
    optimizer = build_optimizer(cfg.optimizer, build_model(cfg.model, 4, 1))
    assert optimizer.defaults[kernel] is True


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad"])
def test_fused_kernel_follows_the_for_loop_one(name):
    from gdtrain.components.models import build_model
    from gdtrain.components.optimizers import build_optimizer

    finals = []
    for kernel in ("for_loop", "fused"):
        cfg = validate(
            {
                "model": {"name": "mlp", "hidden_sizes": [16]},
                "optimizer": {"name": name, "lr": 0.01, "implementation": kernel},
            },
            "test",
        )
        torch.manual_seed(0)
        model = build_model(cfg.model, 8, 1)
        optimizer = build_optimizer(cfg.optimizer, model)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        for _ in range(20):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(finals[0], finals[1], atol=1e-5)


def test_bench_prints_one_row_per_batch_size(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data-root",
            str(tmp_path),
            "--samples",
            "2000",
            "--batch-sizes",
            "64,500",
            "--device",
            "cpu",
            "--no-variants",
            "--no-stacked",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "random data of MNIST's shape" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["64", "500"]
    assert all("x faster" in row and "x the floor" in row for row in rows)


def test_bench_rejects_bad_batch_sizes():
    error_line(CliRunner().invoke(app, ["bench", "--batch-sizes", "32,abc"]))
