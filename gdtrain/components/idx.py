"""MNIST-family IDX files: find, check and read them, and fetch them from the public mirrors.

The layout is torchvision's, `<root>/<Folder>/raw/<file>[.gz]`, so an existing torchvision
download is found as it is. Reading checks each file's IDX header, its length and its counts
against the other files, so a truncated or foreign file is named instead of mis-read. A download
goes to a `.part` file that is renamed only once its md5 matches; a file already in place is
never replaced.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from gdtrain.core.errors import UserError

if TYPE_CHECKING:  # torch is imported by read_idx alone: `check` and `data download` stay quick
    from torch import Tensor


@dataclass(frozen=True)
class Source:
    """Where one MNIST-family dataset lives: its folder under root, mirrors and the files' md5s."""

    folder: str  # torchvision's class name: <root>/<folder>/raw/
    mirrors: tuple[str, ...]  # base URLs, tried in order
    md5: dict[str, str]  # gzipped file name → md5 of the file as the mirrors serve it


SOURCES = {
    "mnist": Source(
        "MNIST",
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": Source(
        "FashionMNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "kmnist": Source(
        "KMNIST",
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        {
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801  # unsigned bytes; 3 and 1 dimensions
N_CLASSES = 10
CHUNK = 1 << 24  # bytes read at a time: memory grows only with the bytes really there


def data_root(root: str | None) -> Path:
    """Where the IDX folders live: data.root (or --root) when given, else $GDTRAIN_DATA, else ./data."""
    return Path(root or os.environ.get("GDTRAIN_DATA") or "data")


def raw_folder(name: str, root: Path) -> Path:
    """`<root>/<Folder>/raw`, where the four files of dataset `name` live."""
    return root / SOURCES[name].folder / "raw"


def find(name: str, root: Path) -> list[Path | None]:
    """Each of the four files, plain or gzipped (plain preferred, it reads faster), or None."""
    folder = raw_folder(name, root)
    found: list[Path | None] = []
    for stem in FILES:
        plain, packed = folder / stem, folder / f"{stem}.gz"
        found.append(plain if plain.is_file() else packed if packed.is_file() else None)
    return found


def _missing_message(name: str, root: Path, missing: list[str]) -> str:
    folder = raw_folder(name, root)
    return (
        f"{name}: {', '.join(missing)} not found in {folder}/; put the four IDX files there "
        f"(gzipped or not), point data.root or $GDTRAIN_DATA at the folder that holds "
        f"{SOURCES[name].folder}/, or run `gdtrain data download {name}`"
    )


def _open(path: Path) -> BinaryIO:
    """The file for reading, decompressed on the fly when it ends in .gz."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 - closed by callers


def _read_header(f: BinaryIO, path: Path, magic: int) -> tuple[int, ...]:
    """The sizes an IDX header gives: (N, rows, cols) for images, (N,) for labels."""
    ndim = magic & 0xFF
    head = f.read(4 + 4 * ndim)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(head) < 4 + 4 * ndim or struct.unpack(">I", head[:4])[0] != magic:
        found = head[:4].hex() if len(head) >= 4 else f"{len(head)} bytes"
        raise UserError(
            f"{path}: not an IDX {kind} file (magic number {found}, expected {magic:08x}); "
            "check that the four files are not swapped or foreign"
        )
    return struct.unpack(f">{ndim}I", head[4:])


def _read_payload(f: BinaryIO, path: Path, shape: tuple[int, ...]) -> bytearray:
    """Exactly the bytes the header gives, in chunks: a short file or a gzip that holds more than its
    header says (a gzip bomb) is refused having decompressed at most one byte past that size."""
    expected = math.prod(shape)  # Python ints: three uint32 sizes overflow int64
    data = bytearray()
    while len(data) < expected and (chunk := f.read(min(expected - len(data), CHUNK))):
        data += chunk
    says = f"its header {list(shape)} gives {expected:,} bytes of pixels or labels"
    if len(data) < expected:
        raise UserError(
            f"{path}: holds {len(data):,} bytes after the header, but {says}; "
            "the file is truncated or damaged, replace it"
        )
    if f.read(1):
        raise UserError(
            f"{path}: holds more than {says} (read no further); the file is damaged or "
            "not one of this set's, replace it"
        )
    return data


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a read or gzip failure into one line naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # BadGzipFile is an OSError: first
        raise UserError(f"{path}: corrupt or truncated gzip ({err}); delete it and put a good copy there") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def header(path: Path, magic: int) -> tuple[int, ...]:
    """The sizes in one IDX file's header, reading (and decompressing) nothing past it."""
    with _reading(path), _open(path) as f:
        return _read_header(f, path, magic)


def read_idx(path: Path, magic: int) -> Tensor:
    """One IDX file as a uint8 tensor: (N, rows, cols) for images, (N,) for labels."""
    import torch

    with _reading(path), _open(path) as f:
        shape = _read_header(f, path, magic)
        data = _read_payload(f, path, shape)
    if not data:  # frombuffer refuses an empty buffer
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).reshape(shape)


def _check_labels(labels: Tensor, labels_path: Path) -> None:
    if len(labels) and int(labels.max()) >= N_CLASSES:
        raise UserError(f"{labels_path}: holds label {int(labels.max())}, expected 0-{N_CLASSES - 1}")


def _paths(name: str, root: Path) -> list[Path]:
    """The four files, or a UserError naming the missing ones and how to get them."""
    paths = find(name, root)
    missing = [stem for stem, path in zip(FILES, paths) if path is None]
    if missing:
        raise UserError(_missing_message(name, root, missing))
    return paths  # type: ignore[return-value]


def shapes(name: str, root: Path) -> tuple[tuple[int, ...], tuple[int, ...], list[Path]]:
    """(train images' shape, test images' shape, the four paths) from the headers alone, checked
    against each other: what the data will take is known before any of it is read."""
    paths = _paths(name, root)
    train_x, train_y, test_x, test_y = (
        header(path, IMAGES_MAGIC if "images" in path.name else LABELS_MAGIC) for path in paths
    )
    for images, labels, images_path, labels_path in ((train_x, train_y, *paths[:2]), (test_x, test_y, *paths[2:])):
        if images[0] != labels[0]:
            raise UserError(
                f"{images_path}: {images[0]} images but {labels_path.name} has {labels[0]} labels; "
                "the two files come from different sets, replace one"
            )
    if train_x[1:] != test_x[1:]:
        raise UserError(f"{paths[2]}: images of {tuple(test_x[1:])}, training images are {tuple(train_x[1:])}")
    return train_x, test_x, paths


def load(name: str, root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, test images, test labels); images (N, 28, 28) uint8, labels int64."""
    _, _, paths = shapes(name, root)
    train_x, train_y, test_x, test_y = (
        read_idx(path, IMAGES_MAGIC if "images" in path.name else LABELS_MAGIC) for path in paths
    )
    _check_labels(train_y, paths[1])
    _check_labels(test_y, paths[3])
    return train_x, train_y.long(), test_x, test_y.long()


def md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Stream `url` into `target`."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as f:  # noqa: S310 - fixed https/http mirrors
        while chunk := response.read(1 << 20):
            f.write(chunk)


def download(name: str, root: Path, timeout: float = 10.0) -> list[Path]:
    """Fetch the files of `name` that are missing, mirror after mirror, md5-checked; return all four."""
    source = SOURCES[name]
    folder = raw_folder(name, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"{folder}: cannot create the data folder ({err.strerror or err}); set data.root or --root"
        ) from None
    paths = find(name, root)
    for i, (stem, path) in enumerate(zip(FILES, paths)):
        if path is not None:  # already here: read and checked at load, never replaced
            continue
        packed = f"{stem}.gz"
        target, part = folder / packed, folder / f".{packed}.part"
        failures = []
        for mirror in source.mirrors:
            try:
                _fetch(mirror + packed, part, timeout)
            except (urllib.error.URLError, OSError, ValueError) as err:
                failures.append(f"{mirror}: {getattr(err, 'reason', None) or err}")
                continue
            got = md5(part)
            if got == source.md5[packed]:
                os.replace(part, target)
                paths[i] = target
                break
            failures.append(f"{mirror}: md5 {got}, expected {source.md5[packed]}")
        part.unlink(missing_ok=True)
        if paths[i] is None:
            raise UserError(
                f"{name}: could not download {packed} ({'; '.join(failures)}); with no network, "
                f"copy the four files into {folder}/"
            )
    return paths  # type: ignore[return-value]
