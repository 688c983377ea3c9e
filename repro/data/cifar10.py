"""CIFAR-10 from either on-disk format, held as tensors in memory and augmented a whole batch at once.

Two formats are read:
- torchvision's binary release `cifar-10-batches-py/` (what `CIFAR10(download=True)` fetches),
  read through `torchvision.datasets.CIFAR10`, which also checks its checksums;
- the JPEG tarballs `train.tar.gz` / `test.tar.gz` with `{train,test}/<class>/<n>.jpg` members
  (the offline copy in ../shared/data/cifar10-jpg). They are decoded once and cached as a uint8
  array next to the tarballs, or under `cache_dir` when that folder is read-only.

After loading, the whole data set lives on the training device (as airbench does): an epoch is a
permutation plus per-image crop offsets and flips drawn up front from a generator seeded by
(seed, epoch), so any batch of any epoch can be produced again exactly (resume, DDP shards).
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from repro.util import atomic_write

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS = ("train", "test")
IMAGE_SHAPE = (32, 32, 3)
PREPROCESS = ("standardize", "zca")
# Fixed seed of the train/val split, so every run and seed validates on the same images.
VAL_SPLIT_SEED = 0


# ------------------------------------------------------------------------------ loading
def load_cifar10(root, cache_dir=None, download: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "test": (...)}: images uint8 (N, 32, 32, 3), labels int64 (N,)."""
    root = Path(os.path.expanduser(str(root)))
    if (root / "cifar-10-batches-py").is_dir() or not _has_jpeg_tarballs(root):
        return _load_torchvision(root, download)
    cache = _cache_folder(root, cache_dir)
    return {split: _load_jpeg_tarball(root / f"{split}.tar.gz", cache) for split in SPLITS}


def _has_jpeg_tarballs(root: Path) -> bool:
    return all((root / f"{split}.tar.gz").is_file() for split in SPLITS)


def _load_torchvision(root: Path, download: bool):
    from torchvision.datasets import CIFAR10

    where = (
        f"put torchvision's cifar-10-batches-py/ or the JPEG tarballs train.tar.gz and test.tar.gz "
        f"({{train,test}}/<class>/<n>.jpg) into {root}, or point data.root at a folder holding them"
    )
    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise FileNotFoundError(f"CIFAR-10 not found in {root} (data.download=false): {where}")
    try:
        sets = {split: CIFAR10(str(root), train=split == "train", download=download) for split in SPLITS}
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"CIFAR-10 in {root} is missing or corrupted ({error}): {where}") from None
    except OSError as error:  # no network: URLError and friends
        raise FileNotFoundError(f"CIFAR-10 not found in {root} and the download failed ({error}): {where}") from None
    return {split: (np.asarray(s.data, np.uint8), np.asarray(s.targets, np.int64)) for split, s in sets.items()}


def _writable(folder: Path) -> bool:
    # A folder whose mode denies writing counts as read-only even for root, who could write anyway:
    # a shared read-only data folder must not grow cache files.
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def _cache_folder(root: Path, cache_dir) -> Path:
    if _writable(root):
        return root
    if cache_dir is None:
        raise ValueError(f"{root} is read-only and no data.cache_dir is set for the decoded CIFAR-10 cache")
    # One cache folder per source folder, so two copies of the tarballs never share a cache.
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    folder = Path(os.path.expanduser(str(cache_dir))) / f"cifar10-jpg-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _load_jpeg_tarball(tarball: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    info = tarball.stat()
    source = f"{tarball.resolve()}:{info.st_size}:{info.st_mtime_ns}"
    cached = cache / f"{tarball.name.removesuffix('.tar.gz')}.uint8.npz"
    if cached.is_file():
        with np.load(cached) as arrays:
            if str(arrays["source"]) == source:
                return arrays["images"], arrays["labels"]
    images, labels = _decode_jpeg_tarball(tarball)
    with atomic_write(cached, "wb") as f:  # np.savez appends .npz to bare paths; a file object keeps the name
        np.savez(f, images=images, labels=labels, source=np.array(source))
    return images, labels


def _decode_jpeg_tarball(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    members = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and parts[-1].lower().endswith(".jpg"):
                members[member.name] = (parts[-2], tar.extractfile(member).read())
    classes = sorted({cls for cls, _ in members.values()})
    if tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"{tarball}: class folders {classes} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
    names = sorted(members)  # tar order is arbitrary; sorted paths give the same array everywhere
    images = np.empty((len(names), *IMAGE_SHAPE), np.uint8)
    labels = np.empty(len(names), np.int64)
    for i, name in enumerate(names):
        cls, data = members[name]
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if image.shape != IMAGE_SHAPE:
            raise ValueError(f"{tarball}:{name} is {image.shape}, expected {IMAGE_SHAPE}")
        images[i], labels[i] = image, classes.index(cls)
    return images, labels


# ------------------------------------------------------------------------- preprocessing
@dataclass
class CifarSplits:
    """Preprocessed float images (N, 3, 32, 32) and int64 labels per split, on one device."""

    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    val: Optional[tuple[Tensor, Tensor]] = None


def prepare_cifar10(
    raw: dict, *, val_size: int = 0, preprocess: str = "standardize", zca_eps: float = 1e-5,
    device="cpu",
) -> CifarSplits:
    """Hold out `val_size` training images, preprocess with statistics of the remaining training
    images only, and move everything to `device`.

    "standardize": per-channel mean/std. "zca": the weight-norm paper's setup (Salimans & Kingma's
    code): pixels scaled to [-1, 1], then ZCA whitening with regularization `zca_eps`."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    images, labels = (torch.from_numpy(a) for a in raw["train"])
    if not 0 <= val_size < len(images):
        raise ValueError(f"val_size must be in [0, {len(images)}), got {val_size}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    keep = len(images) - val_size
    train_idx, val_idx = order[:keep].sort().values, order[keep:].sort().values
    splits = {"train": (images[train_idx], labels[train_idx])}
    splits["test"] = tuple(torch.from_numpy(a) for a in raw["test"])
    if val_size:
        splits["val"] = (images[val_idx], labels[val_idx])

    to_float = _standardizer if preprocess == "standardize" else _zca_whitener
    transform = to_float(splits["train"][0], zca_eps)
    out = {k: (transform(x).to(device), y.to(device)) for k, (x, y) in splits.items()}
    return CifarSplits(**out)


def _nchw(images: Tensor) -> Tensor:
    return images.permute(0, 3, 1, 2).float()


def _standardizer(train: Tensor, _eps: float):
    x = _nchw(train) / 255.0
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return lambda images: ((_nchw(images) / 255.0 - mean) / std).contiguous()


def _zca_whitener(train: Tensor, eps: float):
    def scaled(images):
        return (_nchw(images) - 127.5) / 128.0

    x = scaled(train).flatten(1).double()
    mean = x.mean(0)
    x -= mean
    cov = x.T @ x / len(x)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    whiten = (eigvecs * (eigvals + eps).rsqrt()) @ eigvecs.T
    mean, whiten = mean.float(), whiten.float()
    return lambda images: ((scaled(images).flatten(1) - mean) @ whiten).view(-1, 3, 32, 32).contiguous()


# ------------------------------------------------------------------------------ batches
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # crc32 mixes (seed, epoch) so neighbouring seeds do not share shifted epoch streams.
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{epoch}".encode()))


class ImageBatches:
    """Batches of in-memory images: `len()` batches per epoch, `iter_epoch(epoch, start)` yields
    (images, labels) from batch `start` on, the same every time for the same (seed, epoch).

    `batch_size` is the global batch; with `world_size` > 1 each rank gets its contiguous
    1/world_size share of every global batch, so the ranks together see exactly what one process
    would. Training batches (`shuffle=True`) get a random crop from the image zero-padded by
    `crop_padding` pixels and a random horizontal flip (when `flip`); the last partial batch is
    dropped so every step has the same size. Evaluation batches keep order and the remainder.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool, seed: int = 0,
        crop_padding: int = 0, flip: bool = False, rank: int = 0, world_size: int = 1,
    ):
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size must be a positive multiple of world_size={world_size}, got {batch_size}")
        if shuffle and batch_size > len(images):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(images)} training images")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.crop_padding, self.flip = crop_padding, flip
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        n, device = len(self.images), self.images.device
        if self.shuffle:
            g = _epoch_generator(self.seed, epoch)
            order = torch.randperm(n, generator=g)
            shifts = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            order, shifts, flips = order.to(device), shifts.to(device), flips.to(device)
        share = self.batch_size // self.world_size
        for b in range(start, len(self)):
            lo = b * self.batch_size + self.rank * share
            if self.shuffle:
                idx = order[lo: lo + share]
                yield self._augment(self.images[idx], shifts[lo: lo + share], flips[lo: lo + share]), self.labels[idx]
            else:
                yield self.images[lo: lo + share], self.labels[lo: lo + share]

    def _augment(self, x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
        p = self.crop_padding
        if p:
            n, c, h, w = x.shape
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            arange = functools.partial(torch.arange, device=x.device)
            rows = (shifts[:, 0, None] + arange(h))[:, None, :, None]
            cols = (shifts[:, 1, None] + arange(w))[:, None, None, :]
            x = padded[arange(n)[:, None, None, None], arange(c)[None, :, None, None], rows, cols]
        if self.flip:
            x = torch.where(flips[:, None, None, None], x.flip(3), x)
        return x
