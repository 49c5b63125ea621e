"""The two data paths: same tensors and the same validation split from torchvision's Dataset and the in-memory
loader; augmentation as one object."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from mnist_lesson.config import VALIDATION_IMAGES, Augment, UsageError
from mnist_lesson.data import DataError
from mnist_lesson.loaders import (
    MNIST_MEAN,
    MNIST_STD,
    InMemoryLoader,
    affine_batch,
    augment_batch,
    dataloaders,
    in_memory_loaders,
    load_split,
    random_draws,
    read_idx,
    split_validation,
    torchvision_datasets,
)


def random_affine(images: torch.Tensor, rotation: float, shift: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch as the in-memory loader does, with draws from `generator`."""
    return augment_batch(images, Augment(rotation, shift), random_draws(len(images), generator))


@pytest.mark.parametrize("train", [True, False])
def test_in_memory_path_matches_torchvision_dataset(mnist_root: Path, train: bool) -> None:
    images, labels = load_split(train, mnist_root)
    train_set, test_set = torchvision_datasets(mnist_root)
    dataset = train_set if train else test_set
    assert len(images) == len(dataset) == (60_000 if train else 10_000)
    picks = [0, 1, 777, len(dataset) - 1]
    loader = InMemoryLoader(images[picks], labels[picks], batch_size=len(picks))
    x, y = next(iter(loader))
    expected_x = torch.stack([dataset[i][0] for i in picks])
    expected_y = torch.tensor([dataset[i][1] for i in picks])
    torch.testing.assert_close(x, expected_x, rtol=0, atol=1e-6)
    assert torch.equal(y, expected_y)


def test_normalization_constants_match_the_training_pixels(mnist_root: Path) -> None:
    images, _ = load_split(True, mnist_root)
    pixels = images.double() / 255
    assert pixels.mean().item() == pytest.approx(MNIST_MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(MNIST_STD, abs=5e-5)


def test_shuffled_epoch_visits_every_image_once_and_is_reproducible() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 2, 2).contiguous()
    labels = torch.arange(10)

    def epoch(seed: int) -> list[int]:
        loader = InMemoryLoader(images, labels, batch_size=3, shuffle=True, seed=seed)
        assert len(loader) == 4
        return [int(v) for _, y in loader for v in y]

    first = epoch(0)
    assert sorted(first) == list(range(10))
    assert first == epoch(0)
    assert first != epoch(1)
    assert first != list(range(10))


def test_batches_keep_image_and_label_together() -> None:
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1).expand(20, 28, 28).contiguous()
    labels = torch.arange(20)
    for x, y in InMemoryLoader(images, labels, batch_size=7, shuffle=True):
        pixel = (x[:, 0, 0, 0] * MNIST_STD + MNIST_MEAN) * 255
        torch.testing.assert_close(pixel, y.float(), rtol=0, atol=1e-3)


def test_augmented_batches_keep_shapes_labels_and_ink() -> None:
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 12:16] = 255
    labels = torch.arange(64) % 10
    loader = InMemoryLoader(images, labels, batch_size=16, shuffle=True, augment=Augment(rotation=10, shift=0.1))
    seen = []
    for x, y in loader:
        assert x.shape == (len(y), 1, 28, 28) and x.dtype == torch.float32
        ink = (x * MNIST_STD + MNIST_MEAN).sum(dim=(1, 2, 3))
        # A small rotation and shift moves the stroke but keeps it (bilinear resampling, within the frame).
        torch.testing.assert_close(ink, torch.full_like(ink, 32.0), rtol=0.1, atol=0)
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == sorted(labels.tolist())
    unaugmented = next(iter(InMemoryLoader(images, labels, batch_size=64)))[0]
    augmented = torch.cat([x for x, _ in InMemoryLoader(images, labels, batch_size=64, augment=Augment(10, 0.1))])
    assert not torch.allclose(augmented, unaugmented)


def test_random_affine_without_range_is_the_identity() -> None:
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(random_affine(x, 0.0, 0.0), x, rtol=0, atol=1e-5)


def test_affine_batch_rotates_and_shifts_exactly() -> None:
    """90 degrees must equal torch.rot90 and a shift of 2/28 a 2-pixel move (independent oracles)."""
    x = torch.rand(3, 1, 28, 28)
    rotated = affine_batch(x, torch.full((3,), 90.0), torch.zeros(3, 2))
    assert any(torch.allclose(rotated, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, -1))
    shifted = affine_batch(x, torch.zeros(3), torch.full((3, 2), 2 / 28))
    moved = torch.zeros_like(x)
    moved[..., :-2, :-2] = x[..., 2:, 2:]  # content moves by exactly 2 pixels per axis, zeros come in
    torch.testing.assert_close(shifted, moved, rtol=0, atol=1e-5)


def test_random_affine_stays_within_its_range() -> None:
    x = torch.zeros(200, 1, 28, 28)
    x[:, :, 13:15, 13:15] = 1.0  # a dot at the centre: rotation barely moves it, a shift moves it
    out = random_affine(x, rotation=0.0, shift=3 / 28, generator=torch.Generator().manual_seed(0))
    rows = (out.sum(dim=3).squeeze(1) * torch.arange(28)).sum(1) / out.sum(dim=(1, 2, 3))
    offsets = rows - 13.5
    assert offsets.abs().max() <= 3 + 1e-4
    assert offsets.abs().max() > 2  # 200 draws: the range is actually used


def test_in_memory_loader_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(torch.rand(4, 28, 28), torch.zeros(4, dtype=torch.long), batch_size=2)
    with pytest.raises(ValueError, match="integer labels"):
        InMemoryLoader(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), batch_size=0)


def test_read_idx_explains_a_damaged_file(tmp_path: Path) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="header promises 5"):
        read_idx(bad)


def test_one_draw_per_epoch_gives_the_same_batches_as_a_draw_per_batch() -> None:
    """The loader draws an epoch's angles and shifts at once (one copy to the device); the numbers are those
    of drawing batch by batch from the same generator, so recorded runs stay reproducible."""
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    loader = InMemoryLoader(images, labels, batch_size=16, shuffle=True, augment=Augment(7, 0.1), seed=3)
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(50, generator=generator)
    for start, (x, y) in zip(range(0, 50, 16), loader, strict=True):
        index = order[start : start + 16]
        expected = random_affine(images[index].unsqueeze(1).float() / 255, 7, 0.1, generator)
        torch.testing.assert_close(x, (expected - MNIST_MEAN) / MNIST_STD)
        assert torch.equal(y, labels[index])


def test_validation_split_is_the_last_10000_training_images_on_both_paths(mnist_root: Path) -> None:
    """Training leaves out the last 10,000 training images; "val" holds exactly them, "train_eval" the first
    10,000; the test set is untouched. Both data paths agree image for image."""
    images, labels = load_split(True, mnist_root)
    (train_x, _), (val_x, val_y) = split_validation(images, labels)
    assert len(train_x) == 60_000 - VALIDATION_IMAGES and torch.equal(val_x, images[-VALIDATION_IMAGES:])
    memory_train, memory_sets = in_memory_loaders(1000, validation=True, root=mnist_root)
    loader_train, loader_sets = dataloaders(1000, validation=True, root=mnist_root, num_workers=0)
    assert set(memory_sets) == set(loader_sets) == {"val", "test", "train_eval"}
    assert len(memory_train.labels) == len(loader_train.dataset) == 50_000
    for name in ("val", "train_eval"):
        (x_memory, y_memory), (x_loader, y_loader) = next(iter(memory_sets[name])), next(iter(loader_sets[name]))
        torch.testing.assert_close(x_memory, x_loader, rtol=0, atol=1e-6)
        assert torch.equal(y_memory, y_loader)
    assert torch.equal(next(iter(memory_sets["val"]))[1], val_y[:1000])
    full_train, full_sets = in_memory_loaders(1000, root=mnist_root)
    assert set(full_sets) == {"test"} and len(full_train.labels) == 60_000


def test_augment_is_one_checked_object() -> None:
    assert not Augment().active and Augment(rotation=7).active and Augment(shift=0.1).active
    for bad in (dict(rotation=-1), dict(shift=float("nan")), dict(shift=1.5), dict(rotation=float("inf"))):
        with pytest.raises(UsageError):
            Augment(**bad)


@pytest.mark.parametrize("batch_size", [64, 32, 7, 1000])
def test_chunked_batches_are_the_per_batch_ones_bit_for_bit(batch_size: int) -> None:
    """Augmenting a chunk of whole batches at once (fewer operations a step) changes no number: every batch equals
    the one made batch by batch (chunk_images=1), the last, shorter batch included."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3000, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (3000,), generator=generator)
    make = partial(InMemoryLoader, images, labels, batch_size, shuffle=True, augment=Augment(7.0, 0.1), seed=5)
    per_batch, chunked = list(make(chunk_images=1)), list(make())
    assert len(per_batch) == len(chunked) == math.ceil(3000 / batch_size)
    for (x1, y1), (x2, y2) in zip(per_batch, chunked, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert make().chunk % batch_size == 0 and make().chunk >= batch_size


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_a_bad_chunk_size_is_refused_with_what_to_pass(chunk: object) -> None:
    with pytest.raises(ValueError, match="chunk_images must be a positive integer"):
        InMemoryLoader(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2,
                       chunk_images=chunk)  # type: ignore[arg-type]
