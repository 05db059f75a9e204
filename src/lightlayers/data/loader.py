"""Batches from cached uint8 images, built on the training device.

On a GPU the split is copied to the device once as uint8 (a quarter of float32), in chunks
read from the memory-mapped cache; each batch is gathered, converted to float, augmented and
normalised there, so no worker processes, no per-epoch decoding and no host-to-device copy per
batch (the original study's bottleneck). A split too large for the device stays in the
memory-mapped cache and each batch is gathered into pinned memory and copied. On the CPU,
batches are gathered straight from the memory map. Either way one copy of the split exists
(the device's, or the cache file's pages), never a second one in private host memory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from lightlayers.data.augment import AugmentConfig, augment_batch
from lightlayers.data.dataset import Rows, Split

__all__ = ["DeviceLoader"]

# Rows copied to the device per step when a split is placed there (a bounded host buffer).
_PLACE_CHUNK_BYTES = 64 << 20


def _host_tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # Cached arrays are read-only memory maps; nothing here writes to them in place.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(a)


def _source(images: np.ndarray | Rows) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(array, rows, repeat): the split is ``array[rows]`` (all of ``array`` when rows is
    None), with its single channel repeated ``repeat`` times (1: as stored)."""
    base, rows = (images.base, images.index) if isinstance(images, Rows) else (images, None)
    base = base if isinstance(base, np.ndarray) else np.asarray(base)
    if base.ndim == 4 and base.shape[1] > 1 and base.strides[1] == 0:
        # One stored channel shown as several: gather the one, repeat it on the device.
        return base[:, :1], rows, base.shape[1]
    return base, rows, 1


def _gather(host: torch.Tensor, rows: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    return host[lo:hi] if rows is None else host.index_select(0, rows[lo:hi])


def _place(host: torch.Tensor, rows: torch.Tensor | None, n: int, device: torch.device
           ) -> torch.Tensor | None:
    """The split copied onto ``device`` in chunks when it fits in half its free memory, else
    None (batches are then gathered from the host and copied one by one)."""
    if device.type == "cpu":
        return None
    row_bytes = int(np.prod(host.shape[1:])) * host.element_size()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if n * row_bytes > free // 2:
            return None
    step = max(1, _PLACE_CHUNK_BYTES // max(row_bytes, 1))
    try:
        out = torch.empty((n, *host.shape[1:]), dtype=host.dtype, device=device)
        for lo in range(0, n, step):
            out[lo : lo + step].copy_(_gather(host, rows, lo, min(lo + step, n)))
        return out
    except torch.OutOfMemoryError:
        return None


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class DeviceLoader:
    """Yield ``(images, labels)``: float32 (B, C, H, W) and int64 (B,), both on ``device``.

    Args:
        split: a :class:`Split` of a loaded dataset.
        batch_size: images per batch.
        device: where batches are built.
        shuffle: a new order every epoch, from (seed, epoch).
        seed: seeds shuffling and augmentation.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        augment: random per-image changes, applied to whole batches on the device.
        mean, std: per channel, applied after scaling to [0, 1] (as torchvision's Normalize
            after ToTensor); one value or one per output channel. Default: [0, 1] scaling only.
        out_chans: 3 repeats 1-channel images into 3 channels (for ImageNet backbones).
        crop: center-crop each image to ``crop`` x ``crop`` pixels first (a pretrained
            backbone's resize-then-crop recipe; the images are decoded at the resize size).

    Example::

        loader = DeviceLoader(ds.splits["train"], 64, "cuda", shuffle=True, seed=1)
        for epoch in range(20):
            loader.set_epoch(epoch)
            for images, labels in loader:
                ...
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        augment: AugmentConfig | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        out_chans: int | None = None,
        crop: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        in_chans = split.images.shape[1]
        self.out_chans = in_chans if out_chans is None else out_chans
        if self.out_chans != in_chans and not (in_chans == 1 and self.out_chans == 3):
            raise ValueError(
                f"out_chans={out_chans} for {in_chans}-channel images; only 1 -> 3 is supported"
            )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        mean_t = torch.tensor([0.0] if mean is None else list(mean), dtype=torch.float32)
        std_t = torch.tensor([1.0] if std is None else list(std), dtype=torch.float32)
        for name, t in (("mean", mean_t), ("std", std_t)):
            if t.ndim != 1 or len(t) not in (1, self.out_chans):
                raise ValueError(f"{name} needs 1 or {self.out_chans} values, got {t.tolist()}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be > 0, got {std_t.tolist()}")
        # x_norm = (u8 / 255 - mean) / std as one multiply-add: u8 * a + b.
        self._mul = (1 / (255 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._add = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)
        self._std_inv = (1 / std_t).view(1, -1, 1, 1).to(self.device)
        self._shift = bool((mean_t != 0).any())
        h, w = split.images.shape[-2:]
        if crop is not None and not 1 <= crop <= min(h, w):
            raise ValueError(f"crop={crop} for {h}x{w} images; it must be in 1..{min(h, w)}")
        # A view: no copy of the split; each batch's slice is made contiguous when converted.
        self._crop = None if crop is None or crop == min(h, w) == max(h, w) else (
            slice((h - crop) // 2, (h - crop) // 2 + crop),
            slice((w - crop) // 2, (w - crop) // 2 + crop))
        base, rows, self._repeat = _source(split.images)
        self._labels = torch.tensor(np.asarray(split.labels), dtype=torch.int64).to(self.device)
        self.num_samples = len(self._labels)
        self._images = _host_tensor(base)
        self._rows = None if rows is None else torch.from_numpy(np.asarray(rows, np.int64))
        placed = _place(self._images, self._rows, self.num_samples, self.device)
        # resident: batches are gathered where they are used (the device, or the CPU itself).
        self.resident = self.device.type == "cpu" or placed is not None
        if placed is not None:
            self._images, self._rows = placed, None
        self._epoch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the order (and augmentation) of ``epoch``; later epochs follow from it."""
        self._epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self._epoch))
        self._epoch += 1
        n, bs = self.num_samples, self.batch_size
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        if order is not None and self.resident:
            order = order.to(self.device)
        for i in range(len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            if order is None:
                xb, yb = _gather(self._images, self._rows, lo, hi), self._labels[lo:hi]
            else:
                idx = order[lo:hi]
                at = idx if self._rows is None else self._rows[idx]
                xb = self._images.index_select(0, at)
                yb = self._labels.index_select(0, idx.to(self.device))
            if not self.resident:
                xb = xb.pin_memory().to(self.device, non_blocking=True)
            yield self._convert(xb, gen), yb

    def _convert(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # One fresh float tensor per batch, then in-place ops: on the CPU each extra
        # full-size temporary costs about as much as the conversion itself.
        if self._crop is not None:
            xb = xb[..., self._crop[0], self._crop[1]]
        if self._repeat > 1:
            xb = xb.expand(-1, self._repeat, -1, -1)  # the float copy below is a dense one
        x = xb.to(torch.float32)
        scale = self._mul
        if self.augment is not None:
            x = augment_batch(x.div_(255), self.augment, gen)
            scale = self._std_inv
        if self.out_chans != x.shape[1]:
            x = x.expand(-1, self.out_chans, -1, -1) * scale
        else:
            x = x.mul_(scale)
        return x.add_(self._add) if self._shift else x
