"""Tiny CIFAR-10 look-alikes in both real on-disk formats, for tests and the `smoke` experiment.

Images are noise around a class-specific colour and stripe pattern, so a model can learn them in
a few steps (loss going down is a meaningful check) while the files follow the real layouts:
- "jpeg": train.tar.gz / test.tar.gz with {train,test}/<class>/<nnnn>.jpg members;
- "pickle": torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta).

    python -m repro.data.fixtures DIR [--format jpeg|pickle] [--train N] [--test N]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .cifar10 import CIFAR10_CLASSES

FORMATS = ("jpeg", "pickle")


def fake_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CIFAR10_CLASSES)
    rng.shuffle(labels)
    palette = np.random.default_rng(1234).integers(40, 216, (len(CIFAR10_CLASSES), 3))
    rows = np.arange(32)[:, None]
    images = np.empty((n, 32, 32, 3), np.float64)
    for i, label in enumerate(labels):
        stripes = 70 * np.sin(rows * (label + 1) * np.pi / 16)  # (32, 1): horizontal stripes
        images[i] = palette[label] + stripes[..., None] + rng.normal(0, 15, (32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_jpeg_tarballs(root: Path, n_train: int, n_test: int) -> None:
    from PIL import Image

    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = fake_images(n, seed)
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tar:
            for i, (image, label) in enumerate(zip(images, labels)):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="JPEG", quality=95)
                member = tarfile.TarInfo(f"{split}/{CIFAR10_CLASSES[label]}/{i:04d}.jpg")
                member.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(member, buffer)


def write_torchvision_batches(root: Path, n_train: int, n_test: int) -> dict[str, str]:
    """Write cifar-10-batches-py/; return {file name: md5}, which torchvision checks files against."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = fake_images(n_train, 1), fake_images(n_test, 2)
    files = {f"data_batch_{i + 1}": tuple(part[i::5] for part in train) for i in range(5)}
    files["test_batch"] = test
    md5 = {}
    for name, (images, labels) in files.items():
        entry = {"batch_label": name, "labels": labels.tolist(),
                 "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),  # channel-major rows
                 "filenames": [f"{name}_{i}.png" for i in range(len(images))]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    for path in folder.iterdir():
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5


def write_fixture(root, fmt: str = "jpeg", n_train: int = 200, n_test: int = 100) -> dict[str, str]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "jpeg":
        write_jpeg_tarballs(root, n_train, n_test)
        return {}
    return write_torchvision_batches(root, n_train, n_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--format", choices=FORMATS, default="jpeg")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    write_fixture(args.root, args.format, args.train, args.test)
    print(args.root)


if __name__ == "__main__":
    main()
