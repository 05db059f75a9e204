"""DeviceLoader: batches, seeded shuffling per epoch, normalisation, channels, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightlayers.data import AugmentConfig, DeviceLoader, Split


def _split(n: int = 10, c: int = 1, size: int = 6) -> Split:
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, c, size, size), np.uint8
    )
    images.flags.writeable = False
    labels = np.arange(n, dtype=np.int64) % 3
    labels.flags.writeable = False
    return Split(images=images, labels=labels, ids=None)


def _firsts(loader: DeviceLoader) -> list[int]:
    """The image numbers of one epoch, in order (image i is filled with value i)."""
    return [round(v * 255) for x, _ in loader for v in x[:, 0, 0, 0].tolist()]


def test_batches_types_and_lengths() -> None:
    loader = DeviceLoader(_split(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 1, 6, 6) and y.dtype == torch.int64
    assert x.device.type == "cpu" and y.tolist() == [0, 1, 2, 0]
    assert _firsts(loader) == list(range(10))
    dropped = DeviceLoader(_split(10), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


def test_labels_follow_their_images_when_shuffled() -> None:
    loader = DeviceLoader(_split(30), batch_size=7, shuffle=True, seed=3)
    for x, y in loader:
        ids = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(ids % 3, y)


def test_shuffle_is_seeded_per_epoch() -> None:
    a = DeviceLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    epoch0, epoch1 = _firsts(a), _firsts(a)  # iterating again moves to the next epoch
    assert sorted(epoch0) == sorted(epoch1) == list(range(50)) and epoch0 != epoch1
    b = DeviceLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    b.set_epoch(1)
    assert _firsts(b) == epoch1
    b.set_epoch(0)
    assert _firsts(b) == epoch0
    c = DeviceLoader(_split(50), batch_size=8, shuffle=True, seed=2)
    assert _firsts(c) != epoch0


def test_default_scales_to_unit_range_and_mean_std_normalise() -> None:
    split = _split(4)
    ((x, _),) = DeviceLoader(split, batch_size=4)
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([0, 1, 2, 3]) / 255)
    ((x, _),) = DeviceLoader(split, batch_size=4, mean=[0.5], std=[0.25])
    assert torch.allclose(x[:, 0, 0, 0], (torch.tensor([0, 1, 2, 3]) / 255 - 0.5) / 0.25)


def test_out_chans_replicates_grey_and_normalises_per_channel() -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ((x, _),) = DeviceLoader(_split(2), batch_size=2, out_chans=3, mean=mean, std=std)
    assert x.shape == (2, 3, 6, 6)
    expected = (torch.tensor(1 / 255) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[1, :, 0, 0], expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2, "out_chans": 2},
        {"batch_size": 2, "mean": [0.5]},
        {"batch_size": 2, "mean": [0.1, 0.2], "std": [1.0, 1.0]},
        {"batch_size": 2, "mean": [0.0], "std": [0.0]},
    ],
)
def test_bad_loader_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DeviceLoader(_split(4), **kwargs)  # type: ignore[arg-type]


def _pattern_split(n: int = 16) -> Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 12, 12), dtype=np.uint8)
    return Split(images=images, labels=np.zeros(n, np.int64), ids=None)


def test_hflip_flips_about_half_the_images_exactly() -> None:
    split = _pattern_split(64)
    ((x, _),) = DeviceLoader(split, 64, augment=AugmentConfig(hflip=True), seed=0)
    original = torch.from_numpy(split.images).float() / 255
    same = [torch.equal(a, b) for a, b in zip(x, original, strict=True)]
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(x, original, strict=True)]
    assert all(s or f for s, f in zip(same, flipped, strict=True))
    assert 16 < sum(flipped) < 48


def test_augmentation_is_seeded_and_changes_images() -> None:
    cfg = AugmentConfig(rotate_deg=15, translate=0.1, scale=0.1, brightness=0.2, contrast=0.2)
    split = _pattern_split()
    a = DeviceLoader(split, 8, augment=cfg, seed=4)
    b = DeviceLoader(split, 8, augment=cfg, seed=4)
    xa, xb = next(iter(a))[0], next(iter(b))[0]
    assert torch.equal(xa, xb)
    plain = next(iter(DeviceLoader(split, 8)))[0]
    assert not torch.allclose(xa, plain, atol=1e-3)
    assert xa.min() >= 0 and xa.max() <= 1
    assert not torch.equal(next(iter(a))[0], xa)  # the next epoch draws new parameters


def test_zero_augmentation_is_identity() -> None:
    split = _pattern_split()
    x = next(iter(DeviceLoader(split, 16, augment=AugmentConfig())))[0]
    assert torch.equal(x, next(iter(DeviceLoader(split, 16)))[0])
    assert not AugmentConfig().enabled and AugmentConfig(contrast=0.1).enabled


@pytest.mark.parametrize(
    "kwargs", [{"rotate_deg": -1}, {"scale": 1.0}, {"brightness": float("nan")}, {"hflip": 1}]
)
def test_augment_config_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        AugmentConfig(**kwargs)  # type: ignore[arg-type]


def test_augment_config_is_frozen() -> None:
    cfg = AugmentConfig(hflip=True)
    with pytest.raises(AttributeError):
        cfg.hflip = False  # type: ignore[misc]


def test_read_only_split_raises_no_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(DeviceLoader(_split(8), batch_size=4, shuffle=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_are_built_on_the_gpu() -> None:
    split = _pattern_split(64)
    loader = DeviceLoader(
        split, 16, device="cuda", shuffle=True, augment=AugmentConfig(hflip=True, rotate_deg=5)
    )
    assert loader.resident
    for x, y in loader:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    cpu = DeviceLoader(split, 16, shuffle=True, seed=7)
    gpu = DeviceLoader(split, 16, device="cuda", shuffle=True, seed=7)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu())
