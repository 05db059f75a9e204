"""GPU benchmark of the training path (run through benchmarks/gpu.sh): the issue's GPU numbers.

On one CUDA GPU at 224 px (InceptionV3 at 299), batch 64, chest X-ray set: the whole study
(7 models x 20 epochs x 1 seed with evaluation, transfer features and checkpoints: wall time,
peak RSS, GPU max allocated) first; then per study model our trainer's epoch time against a
plain PyTorch loop (epochs alternating), LightConv2d forward+backward against two
``nn.Conv2d`` (fp32 and bf16, both layouts, the default and the "fast" implementation), the
data pipeline numbers, and other settings of our trainer (channels-last, torch.compile, CUDA
graphs, fp32) on a few models. Parts that would start after ``--budget-s`` are skipped (and
listed as such), so that the suite stays under 8 minutes. Without a CUDA device it says so and
runs everything on the CPU (for ``--smoke`` checks). Pretrained InceptionV3 weights need a
download, so the default is ``--weights none``: the timing does not depend on the weights'
values.

    benchmarks/gpu.sh [--smoke] [--weights DEFAULT] [--json PATH]
"""

from __future__ import annotations

import sys

from _common import SuiteDefaults, main

LIGHT_K1, LIGHT_K5, CONV = "study-light-k1", "study-light-k5", "study-conv"

CHANNELS_LAST = {"memory_format": "channels_last"}
COMPILE = {"compile": "default"}

DEFAULTS = SuiteDefaults(
    size=224, transfer_size=299, epochs=2, transfer_epochs=1, study=True,
    json="benchmarks/results/gpu.json",
    # The defaults on CUDA are bf16 autocast, contiguous, not compiled (no GPU measurements
    # yet): these say whether the other choices pay off there, most telling first, since the
    # time budget may cut the list short.
    variants=(
        ("channels_last", CHANNELS_LAST, (LIGHT_K1,)),
        ("fp32 (no AMP)", {"amp": False}, (LIGHT_K1,)),
        ("compile", COMPILE, (LIGHT_K1,)),
        ("cuda graphs", {"compile": "reduce-overhead"}, (LIGHT_K1,)),
        ("channels_last", CHANNELS_LAST, (LIGHT_K5, CONV)),
        ("compile", COMPILE, (CONV,)),
    ),
    light_conv_amp=(False, True),
    light_conv_impls=("auto", "fast"),
    light_conv_layouts=(False, True),
    workers=8,
)

if __name__ == "__main__":
    sys.exit(main(__doc__.split("\n")[0], DEFAULTS, "GPU suite"))
