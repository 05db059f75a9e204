"""``lightlayers predict MODEL INPUTS...``: classify new images with an exported model.

MODEL is a file written by ``lightlayers export`` (.onnx, or a TorchScript .pt) or a run
folder (``RUN_DIR``, ``RUN_DIR:MODEL``, ``RUN_DIR:MODEL:SEED``; its best trial on validation
by default), which is exported in memory. The preprocessing comes from the model's metadata
and is the code training used; ONNX models run on ONNX Runtime on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from lightlayers.commands._args import positive_int
from lightlayers.commands._json import json_safe
from lightlayers.outputs import OutputFolder, check_output_file, write_output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="exported .onnx/.pt file, or RUN_DIR[:MODEL[:SEED]]")
    p.add_argument("inputs", metavar="INPUTS", nargs="+",
                   help="image files, folders (searched recursively) or .tar.gz/.tgz/.zip "
                        "archives of images")
    p.add_argument("--out", help="write the predictions to this file (default: stdout)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object (predictions, skipped images) instead of CSV")
    p.add_argument("--cam", metavar="DIR",
                   help="write one Grad-CAM heatmap PNG per image into DIR (the predicted "
                        "class's map over the image as the model saw it)")
    p.add_argument("--cam-min-side", type=positive_int, default=None, metavar="N",
                   help="draw no heatmap when the model's map is smaller than N x N "
                        "(default: 7): a smaller map is a few blocks over the whole image")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per model call (default: 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")



def main(args: argparse.Namespace) -> int:
    # A DeployError is a user error (one line, exit 2): lightlayers.cli lists it.
    from lightlayers.commands.export import PADDING_WARNING

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PADDING_WARNING)
        return _main(args)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _main(args: argparse.Namespace) -> int:
    from lightlayers.deploy import DeployError
    from lightlayers.deploy import export as ex
    from lightlayers.deploy.errors import require
    from lightlayers.deploy.predict import (
        csv_text,
        gather_inputs,
        json_object,
        parse_model,
        predict,
    )

    path, model, seed = parse_model(args.model)
    onnx_model = path.is_dir() or path.suffix.lower() == ".onnx"
    for module in (("onnx", "onnxscript", "onnxruntime") if path.is_dir() else
                   ("onnx", "onnxruntime") if onnx_model else ()):
        require(module)
    if args.cam:
        require("captum")
    inputs = [path, *args.inputs]
    if args.out:
        # Before any work: a refused --out must not cost a whole prediction.
        check_output_file(args.out, inputs, is_predictions, "--out")
    items = gather_inputs(args.inputs)
    if path.is_dir():
        from lightlayers.deploy.trial import trial_card
        from lightlayers.runfolder.trials import choose_trial

        trial, key, n = choose_trial(path, model, seed)
        net = trial.build_model()
        card = trial_card(trial, net)
        deployable, example = ex.deployable_for(net, card)
        blob = ex.to_onnx(deployable, example, card)
        card = ex.card_of_bytes(blob)
        run = ex.run_model(blob)
        _say(args, f"model: {trial.label} of {path} (best on validation {key} of {n}), "
                   "exported in memory")
    else:
        if model is not None or seed is not None:
            raise DeployError(f"{args.model}: MODEL:SEED applies to run folders only")
        card = ex.read_card(path)
        fmt = "onnx" if onnx_model else "torchscript"
        run = ex.run_model(path, fmt)
        _say(args, f"model: {card.model} seed {card.seed} ({card.precision}) from {path}")
    cam_dir = (OutputFolder(args.cam, "heatmaps", inputs=inputs, what="--cam folder")
               if args.cam else None)
    try:
        outcome = predict(run, card, items, args.batch_size, cam_dir, progress=not args.quiet,
                          cam_min_side=args.cam_min_side)
    finally:
        if cam_dir is not None:
            cam_dir.close()
    if not outcome.predictions:
        f, reason = outcome.skipped[0]
        raise DeployError(f"none of the {len(items)} input image(s) could be decoded ({f}: "
                          f"{reason}); give image files (.png, .jpg, ...), folders or archives "
                          "of them")
    for f, reason in outcome.skipped:
        print(f"lightlayers predict: warning: skipped {f}: cannot decode it ({reason})",
              file=sys.stderr)
    if outcome.cam_note:
        print(f"lightlayers predict: {outcome.cam_note}", file=sys.stderr)
    text = (json.dumps(json_safe(json_object(outcome, card)), indent=2, allow_nan=False) + "\n"
            if args.json else csv_text(outcome, card))
    if args.out:
        write_output_file(args.out, text, inputs, is_predictions, "--out")
    else:
        sys.stdout.write(text)
    counts: dict[str, int] = {}
    for p in outcome.predictions:
        counts[p.predicted] = counts.get(p.predicted, 0) + 1
    _say(args, f"predicted {len(outcome.predictions)} image(s) ("
         + ", ".join(f"{c}: {counts[c]}" for c in card.classes if c in counts) + ")"
         + (f", skipped {len(outcome.skipped)} unreadable" if outcome.skipped else "")
         + (f"; wrote {args.out}" if args.out else "")
         + (f"; heatmaps in {cam_dir.path}" if cam_dir and not outcome.cam_note else ""))
    return 0


def is_predictions(path: Path) -> bool:
    """A file an earlier ``lightlayers predict --out`` wrote: its CSV header or JSON keys."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if head.startswith(b"path,predicted,"):
        return True
    try:
        obj = json.loads(path.read_bytes()) if head.lstrip().startswith(b"{") else None
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and {"model", "predictions", "skipped"} <= set(obj)
