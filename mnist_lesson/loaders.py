"""Two ways to feed MNIST to a model: torchvision's Dataset + DataLoader, and an in-memory fast path.

The fast path keeps the whole split as one uint8 tensor on the training device, draws shuffled
mini-batches by indexing it, augments a chunk of whole batches at once (affine_grid + grid_sample)
and normalizes on the fly. Both paths give the same normalized tensors (tests/test_loaders.py) and the
same sets: the training images, optionally without the last 10,000 (the validation split, on which
design choices are judged), and the test set. Introduced in notebook 00.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mnist_lesson.config import CPU_EVAL_BATCH, VALIDATION_IMAGES, Augment
from mnist_lesson.data import DataError, ensure_mnist
from mnist_lesson.train import Batch

CHUNK_IMAGES = 1024  # images gathered and augmented in one go: about 3 MB as float, so a chunk stays in a CPU cache
# Pixel statistics of the 60,000 training images (as fractions of 255); notebook 00 computes them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081



def read_idx(path: Path) -> torch.Tensor:
    """Return the uint8 contents of an IDX image or label file, shaped as its header says."""
    raw = path.read_bytes()
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes; delete it and run `python -m mnist_lesson data`")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise DataError(f"{path} holds {len(body)} bytes of data, its header promises {math.prod(shape)}; "
                        "delete it and run `python -m mnist_lesson data`")
    return torch.from_numpy(np.frombuffer(body, dtype=np.uint8).reshape(shape).copy())


def load_split(train: bool, root: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N, 28, 28], labels int64 [N]) of one split, fetching and verifying first."""
    report = ensure_mnist(root, log=lambda message: print(message, flush=True))
    prefix = "train" if train else "t10k"
    images = read_idx(report.raw / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(report.raw / f"{prefix}-labels-idx1-ubyte").long()
    return images, labels


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Return float images [N, 1, 28, 28] from [0, 1] floats, standardized with the MNIST mean and std."""
    return (images - MNIST_MEAN) / MNIST_STD


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Return uint8 images [N, 28, 28] as float [N, 1, 28, 28] in [0, 1], as ToTensor does."""
    return images.unsqueeze(1).float().div(255)


def split_validation(images: torch.Tensor, labels: torch.Tensor) -> tuple[Batch, Batch]:
    """Return ((train images, labels), (validation images, labels)): the last VALIDATION_IMAGES are held out."""
    if len(images) <= VALIDATION_IMAGES:
        raise ValueError(f"need more than {VALIDATION_IMAGES:,} images to hold out a validation split, "
                         f"got {len(images):,}")
    cut = len(images) - VALIDATION_IMAGES
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def random_draws(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return [n, 3] uniform draws in [-1, 1) on the CPU: per image, an angle and two shifts before scaling."""
    return torch.rand(n, 3, generator=generator).mul_(2).sub_(1)


def augment_batch(images: torch.Tensor, augment: Augment, draws: torch.Tensor) -> torch.Tensor:
    """Return [N, 1, H, W] images rotated and shifted as `augment` allows, scaled from `random_draws` [N, 3]."""
    return affine_batch(images, draws[:, 0] * augment.rotation, draws[:, 1:] * augment.shift)


def affine_batch(images: torch.Tensor, degrees: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Return [N, 1, H, W] images rotated by `degrees` [N] and shifted by `shifts` [N, 2] (fractions of the side)."""
    angle = torch.deg2rad(degrees.to(images.dtype))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates, so a shift of t * side is 2 * t.
    shift = shifts.to(images.dtype) * 2
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Zero padding is black background, since this runs before normalization.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class InMemoryLoader:
    """Mini-batches of one MNIST split held on the device: shuffled, optionally augmented, normalized."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: Augment = Augment(), device: str | torch.device = "cpu", seed: int = 0,
                 chunk_images: int | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 3 or labels.shape != images.shape[:1] \
                or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"expected uint8 images [N, H, W] and integer labels [N], got {images.dtype} "
                             f"{tuple(images.shape)} and {labels.dtype} {tuple(labels.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        chunk_images = CHUNK_IMAGES if chunk_images is None else chunk_images
        if isinstance(chunk_images, bool) or not isinstance(chunk_images, int) or chunk_images < 1:
            raise ValueError(f"chunk_images must be a positive integer, got {chunk_images!r}")
        # Whole batches per chunk, at least one: every batch is a slice of one chunk.
        self.chunk = batch_size * max(1, chunk_images // batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.images.device)
        if self.augment.active:
            # The whole epoch's random numbers in one draw and one copy to the device: a copy per batch
            # would make the host wait for the GPU every step. Same numbers as drawing batch by batch.
            draws = random_draws(n, self.generator).to(self.images.device, non_blocking=True)
        # Images are gathered, augmented and normalized a chunk of whole batches at a time, then handed out batch
        # by batch as slices: a handful of operations per chunk instead of per batch (on a GPU each one is a launch
        # the host must make). Each image's numbers are the same as when it was done batch by batch.
        for begin in range(0, n, self.chunk):
            index = order[begin : begin + self.chunk]
            x = to_unit_float(self.images[index])
            if self.augment.active:
                x = augment_batch(x, self.augment, draws[begin : begin + self.chunk])
            x, y = normalize(x), self.labels[index]
            for start in range(0, len(index), self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]


EvalSets = dict[str, Iterable[Batch]]


def in_memory_loaders(batch_size: int, augment: Augment = Augment(), *, validation: bool = False,
                      eval_batch_size: int = CPU_EVAL_BATCH, device: str | torch.device = "cpu", seed: int = 0,
                      root: str | os.PathLike[str] | None = None) -> tuple[InMemoryLoader, EvalSets]:
    """Return the training loader and the sets to evaluate on, all held on `device`.

    With `validation`, training leaves out the last 10,000 training images and the sets are "val" (those
    images), "test" and "train_eval" (the first 10,000 training images, seen without augmentation in eval
    mode); without it, training uses all 60,000 and the only set is "test". Only training shuffles and augments.
    """
    images, labels = load_split(True, root)
    eval_sets: EvalSets = {}
    if validation:
        (images, labels), held_out = split_validation(images, labels)
        eval_sets["val"] = InMemoryLoader(*held_out, eval_batch_size, device=device)
    train = InMemoryLoader(images, labels, batch_size, shuffle=True, augment=augment, device=device, seed=seed)
    eval_sets["test"] = InMemoryLoader(*load_split(False, root), eval_batch_size, device=device)
    if validation:
        eval_sets["train_eval"] = InMemoryLoader(images[:VALIDATION_IMAGES], labels[:VALIDATION_IMAGES],
                                                 eval_batch_size, device=device)
    return train, eval_sets


def torchvision_transform(augment: Augment = Augment()) -> transforms.Compose:
    """Return the per-image torchvision transform: RandomAffine when `augment` is on, ToTensor, Normalize."""
    steps: list[object] = []
    if augment.active:
        # Bilinear like the in-memory path; torchvision still rounds its shifts to whole pixels.
        steps.append(transforms.RandomAffine(augment.rotation, translate=(augment.shift, augment.shift),
                                             interpolation=transforms.InterpolationMode.BILINEAR))
    steps += [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    return transforms.Compose(steps)


def torchvision_datasets(root: str | os.PathLike[str] | None = None,
                         augment: Augment = Augment()) -> tuple[datasets.MNIST, datasets.MNIST]:
    """Return torchvision's (train, test) MNIST Datasets over the verified files under the data root."""
    base = ensure_mnist(root, log=lambda message: print(message, flush=True)).root
    train = datasets.MNIST(base, train=True, transform=torchvision_transform(augment))
    test = datasets.MNIST(base, train=False, transform=torchvision_transform())
    return train, test


class DeviceBatches:
    """The batches of a DataLoader that pins them (page-locked memory), copied to a GPU as they come: from pinned
    memory a `non_blocking` copy is queued behind the GPU's work instead of making the host wait for it, and `fit`'s
    own `.to(device)` then finds each batch already there."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def dataloaders(batch_size: int, augment: Augment = Augment(), *, validation: bool = False,
                eval_batch_size: int = CPU_EVAL_BATCH, num_workers: int | None = None,
                device: str | torch.device = "cpu", seed: int = 0,
                root: str | os.PathLike[str] | None = None) -> tuple[DataLoader | DeviceBatches, EvalSets]:
    """Return torchvision DataLoaders as the assignment built them, with the sets of `in_memory_loaders`; for a
    CUDA device they pin their batches and each comes wrapped in `DeviceBatches`."""
    train_set, test_set = torchvision_datasets(root, augment)
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)  # Colab has 2 CPUs and warns above that
    pin = torch.device(device).type == "cuda"
    common = dict(num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
    eval_sets: dict[str, DataLoader] = {}
    if validation:
        plain = datasets.MNIST(train_set.root, train=True, transform=torchvision_transform())
        cut = len(train_set) - VALIDATION_IMAGES
        eval_sets["val"] = DataLoader(Subset(plain, range(cut, len(plain))), eval_batch_size, **common)
        train_set = Subset(train_set, range(cut))
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, **common)
    eval_sets["test"] = DataLoader(test_set, batch_size=eval_batch_size, shuffle=False, **common)
    if validation:
        eval_sets["train_eval"] = DataLoader(Subset(plain, range(VALIDATION_IMAGES)), eval_batch_size, **common)
    if not pin:
        return train, eval_sets
    gpu = torch.device(device)
    return DeviceBatches(train, gpu), {name: DeviceBatches(loader, gpu) for name, loader in eval_sets.items()}
