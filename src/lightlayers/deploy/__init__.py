"""Shipping a trained model: export a trial of a run folder as one self-describing ONNX (or
TorchScript) file, quantize it to int8, run it on new images, and show where it looked.

- :mod:`~lightlayers.deploy.trial`: a trial of a run folder (chosen on validation by
  :mod:`lightlayers.runfolder.trials`) as a deployable model: its card, and the check that an
  export scores on test as the trial recorded.
- :mod:`~lightlayers.deploy.card`: what an exported file says about itself (classes,
  preprocessing, data fingerprint, test metrics), stored in the file.
- :mod:`~lightlayers.deploy.graph`: the exported module (probabilities and Grad-CAM maps).
- :mod:`~lightlayers.deploy.export`: ONNX / TorchScript export, verification, int8.
- :mod:`~lightlayers.deploy.predict`: run an exported file on image files, folders, archives.
- :mod:`~lightlayers.deploy.cam`: Grad-CAM (Captum) and the heatmap images.
- :mod:`~lightlayers.deploy.examples`: heatmaps of a trial's true positives, false positives
  and false negatives, as one figure (for the report).
- :mod:`~lightlayers.deploy.bench`: ONNX sizes and ONNX Runtime CPU latency and throughput
  beside PyTorch's (``deployment_metrics``; ``benchmarks/bench_deploy.py``).
"""

from lightlayers.deploy.errors import DeployError

__all__ = ["DeployError"]
