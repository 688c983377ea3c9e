"""Shared fixtures of the trainer/data/config tests: tiny CIFAR-10 in both on-disk formats, the
translation fixture corpus, config composition and in-process training runs. Test files import what they use from here."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repro.data import translation_fixtures
from repro.data.fixtures import write_fixture
from repro.train import compose_config as repro_compose

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
N_TRAIN, N_TEST = 200, 100


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder with the translation fixture corpus: <split>.en / <split>.de."""
    root = tmp_path_factory.mktemp("fixture_corpus")
    translation_fixtures.write_fixture(root)
    return root


@pytest.fixture(scope="session")
def cifar_jpeg(tmp_path_factory) -> Path:
    """A folder with train.tar.gz / test.tar.gz in the shared data's JPEG layout."""
    root = tmp_path_factory.mktemp("cifar_jpeg")
    write_fixture(root, "jpeg", N_TRAIN, N_TEST)
    return root


@pytest.fixture(scope="session")
def _cifar_pickle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_pickle")
    return root, write_fixture(root, "pickle", N_TRAIN, N_TEST)


@pytest.fixture
def cifar_pickle(_cifar_pickle, monkeypatch) -> Path:
    """A folder with torchvision's cifar-10-batches-py/. torchvision checks each file against the
    official release's md5; the test points those checks at the fixture's own md5s, so the real
    torchvision.datasets.CIFAR10 code path reads it."""
    from torchvision.datasets import CIFAR10

    root, md5 = _cifar_pickle
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Runs share 2 busy cores with other work: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port nothing listens on now, for a test's process group (a fixed port collides with
    another test run on the same machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(*overrides: str):
    return repro_compose(overrides, conf_dir=CONF_DIR)


def smoke_config(root: Path, *overrides: str):
    return compose_config("experiment=smoke", f"data.root={root}", "trainer.deterministic=true", *overrides)
