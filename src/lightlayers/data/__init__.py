"""The data layer: decode a dataset once into a uint8 cache, split it, and batch it on the device.

Example::

    from lightlayers.data import DeviceLoader, load_dataset

    ds = load_dataset("pneumoniamnist", size=64)
    loader = DeviceLoader(ds.splits["train"], batch_size=64, device="cuda", shuffle=True)
"""

from lightlayers.data.augment import AugmentConfig
from lightlayers.data.dataset import Dataset, Split, load_dataset
from lightlayers.data.errors import DataError, DuplicateImagesWarning
from lightlayers.data.loader import DeviceLoader
from lightlayers.data.registry import list_named_sources

__all__ = [
    "AugmentConfig",
    "DataError",
    "Dataset",
    "DeviceLoader",
    "DuplicateImagesWarning",
    "Split",
    "list_named_sources",
    "load_dataset",
]
