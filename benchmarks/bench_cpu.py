"""CPU benchmark of the training path (`make bench`): our trainer against a plain PyTorch loop.

Per study model, at 64 px and batch 64 on the chest X-ray set: epoch time (train + validation)
of ``lightlayers.train.fit`` as ``lightlayers run`` uses it, and of the loop a typical user
writes (DataLoader over a TensorDataset of float32 images, shuffled, fp32, ``loss.item()``
every step), epochs alternating in one process; before them, the whole study's wall time
and peak memory (7 models x 20 epochs x 1 seed; ``--no-study`` skips it, ``--study-epochs``
shortens it); after them, LightConv2d forward+backward against two ``nn.Conv2d``, the data
pipeline numbers of ``bench_data.py`` and other settings of our trainer. InceptionV3 trains
at 75 px, its smallest input. Writes JSON and prints tables; the numbers in
docs/performance.md come from this script.

    .venv/bin/python benchmarks/bench_cpu.py [--smoke] [--no-study] [--json PATH]
"""

from __future__ import annotations

import sys

from _common import SuiteDefaults, main

SMALL_MODELS = (*(f"study-light-k{k}" for k in range(1, 6)), "study-conv")

DEFAULTS = SuiteDefaults(
    size=64, transfer_size=75, epochs=2, transfer_epochs=1, study=True,
    json="benchmarks/results/cpu.json", device="cpu",
    # The main table is the default protocol (torch.compile off, so reruns give the same
    # numbers); these are the same timing with `protocol_overrides: {compile: auto}`, in the
    # default layout and in channels-last (where oneDNN convolutions skip their reorders).
    variants=(("compile auto", {"compile": "auto"}, SMALL_MODELS),
              ("compile auto + channels_last",
               {"compile": "auto", "memory_format": "channels_last"}, SMALL_MODELS)),
)

if __name__ == "__main__":
    sys.exit(main(__doc__.split("\n")[0], DEFAULTS, "CPU suite"))
