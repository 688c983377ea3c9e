"""CIFAR-10 loading from both on-disk formats, the decode cache, splits, preprocessing and batches."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from repro.data import ImageBatches, load_cifar10, prepare_cifar10
from repro.data import cifar10 as cifar_module
from repro.data.fixtures import fake_images
from train_helpers import N_TEST, N_TRAIN, cifar_jpeg, cifar_pickle, _cifar_pickle, one_thread  # noqa: F401

SHARED_CIFAR = cifar_module.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


def test_torchvision_format_is_read_exactly(cifar_pickle):
    data = load_cifar10(cifar_pickle, download=False)
    # torchvision stores data_batch_i = the i-th of every 5 images; compare as sets of (image, label).
    images, labels = fake_images(N_TRAIN, 1)
    order = np.concatenate([np.arange(N_TRAIN)[i::5] for i in range(5)])
    np.testing.assert_array_equal(data["train"][0], images[order])
    np.testing.assert_array_equal(data["train"][1], labels[order])
    np.testing.assert_array_equal(data["test"][0], fake_images(N_TEST, 2)[0])


def test_jpeg_tarballs_decode_close_to_the_originals_and_cache(cifar_jpeg, tmp_path, monkeypatch):
    data = load_cifar10(cifar_jpeg, tmp_path, download=False)
    images, labels = fake_images(N_TRAIN, 1)
    # Members are read in path order: class folder (CIFAR-10's label order), then file index.
    order = np.argsort(labels, kind="stable")
    assert data["train"][0].shape == (N_TRAIN, 32, 32, 3) and data["train"][0].dtype == np.uint8
    np.testing.assert_array_equal(data["train"][1], labels[order])
    error = np.abs(data["train"][0].astype(float) - images[order]).mean()
    mismatched = np.abs(data["train"][0].astype(float) - images[order][::-1]).mean()
    assert error < 14 and mismatched > 2 * error  # JPEG is lossy (it smooths the noise), but close
    assert (cifar_jpeg / "train.uint8.npz").is_file()  # the fixture folder is writable: cache next to it

    def no_decoding(_):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cifar_module, "_decode_jpeg_tarball", no_decoding)
    again = load_cifar10(cifar_jpeg, tmp_path, download=False)
    np.testing.assert_array_equal(again["train"][0], data["train"][0])


def test_read_only_folder_caches_under_cache_dir(cifar_jpeg, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("train.tar.gz", "test.tar.gz"):
        (shared / name).write_bytes((cifar_jpeg / name).read_bytes())
    shared.chmod(0o555)
    try:
        data = load_cifar10(shared, tmp_path / "cache", download=False)
    finally:
        shared.chmod(0o755)
    assert sorted(os.listdir(shared)) == ["test.tar.gz", "train.tar.gz"]
    cached = list((tmp_path / "cache").glob("cifar10-jpg-*/train.uint8.npz"))
    assert len(cached) == 1 and len(data["test"][1]) == N_TEST


def test_missing_data_offline_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_cifar10(tmp_path, download=False)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "train.tar.gz" in message and str(tmp_path) in message


def test_splits_are_disjoint_and_standardized(cifar_pickle):
    raw = load_cifar10(cifar_pickle, download=False)
    splits = prepare_cifar10(raw, val_size=40, preprocess="standardize")
    assert len(splits.train[0]) == N_TRAIN - 40 and len(splits.val[0]) == 40
    assert splits.train[0].shape[1:] == (3, 32, 32)
    train_rows = {tuple(x.flatten()[:16].tolist()) for x in splits.train[0]}
    assert not any(tuple(x.flatten()[:16].tolist()) in train_rows for x in splits.val[0])
    mean, std = splits.train[0].mean(dim=(0, 2, 3)), splits.train[0].std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-3, rtol=0)


def test_zca_whitens_the_leading_directions(cifar_pickle):
    raw = load_cifar10(cifar_pickle, download=False)
    x = prepare_cifar10(raw, preprocess="zca", zca_eps=1e-5).train[0].flatten(1).double()
    x = x - x.mean(0)
    # The covariance's nonzero eigenvalues are those of the small Gram matrix (fewer images than pixels).
    eigvals = torch.linalg.eigvalsh(x @ x.T / len(x))
    # Directions with variance far above eps come out with unit variance.
    torch.testing.assert_close(eigvals[-20:], torch.ones(20, dtype=torch.float64), atol=1e-2, rtol=0)


def _batches(**kwargs):
    images = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).view(64, 3, 4, 4)
    return ImageBatches(images, torch.arange(64), 16, shuffle=True, seed=5, **kwargs)


def test_epochs_are_reproducible_and_resumable_mid_epoch():
    full = list(_batches(crop_padding=1, flip=True).iter_epoch(3))
    assert len(full) == 4
    again = list(_batches(crop_padding=1, flip=True).iter_epoch(3))
    tail = list(_batches(crop_padding=1, flip=True).iter_epoch(3, start=2))
    for (a, la), (b, lb) in zip(full, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, la), (b, lb) in zip(full[2:], tail):
        assert torch.equal(a, b) and torch.equal(la, lb)
    other_epoch = list(_batches().iter_epoch(4))
    assert not torch.equal(full[0][1], other_epoch[0][1])
    assert sorted(torch.cat([y for _, y in full]).tolist()) == list(range(64))


def test_rank_shares_together_are_the_global_batch():
    whole = list(_batches(crop_padding=2, flip=True).iter_epoch(1))
    shares = [list(_batches(crop_padding=2, flip=True, rank=r, world_size=2).iter_epoch(1)) for r in range(2)]
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][b][0], shares[1][b][0]]), x)
        assert torch.equal(torch.cat([shares[0][b][1], shares[1][b][1]]), y)


def test_crop_and_flip_match_a_per_image_reference():
    batches = _batches(crop_padding=2, flip=True)
    images, shifts = batches.images[:16], torch.randint(0, 5, (16, 2))
    flips = torch.rand(16) < 0.5
    out = batches._augment(images, shifts, flips)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        dy, dx = shifts[i].tolist()
        expected = padded[i, :, dy: dy + 4, dx: dx + 4]
        assert torch.equal(out[i], expected.flip(2) if flips[i] else expected)


def test_evaluation_batches_keep_order_and_the_remainder():
    images = torch.randn(50, 3, 4, 4)
    batches = list(ImageBatches(images, torch.arange(50), 16, shuffle=False).iter_epoch(0))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), images)


@pytest.mark.realdata
def test_shared_cifar10_jpegs_load(tmp_path):
    if not SHARED_CIFAR.is_dir():
        pytest.skip(f"needs {SHARED_CIFAR}")
    data = load_cifar10(SHARED_CIFAR, os.path.expanduser("~/.cache/repro"), download=False)
    assert data["train"][0].shape == (50000, 32, 32, 3) and data["test"][0].shape == (10000, 32, 32, 3)
    assert np.bincount(data["train"][1]).tolist() == [5000] * 10
    assert np.bincount(data["test"][1]).tolist() == [1000] * 10
