"""``lightlayers export RUN_DIR``: a trial's model as one self-describing file.

The trial is the best on validation unless ``--model``/``--seed`` pin it (never chosen on
test). Before the file is written, its outputs are compared with the PyTorch checkpoint's on
every validation image (an fp32 file differing by more than 1e-4 in any probability is
refused), and its Grad-CAM maps with Captum's. ``--int8`` quantizes it (ONNX Runtime static
quantization, calibrated on training images) and prints the int8 test accuracy and AUC beside
the fp32 ones, with both file sizes. Beside the file goes its Markdown model card
(``model.onnx`` -> ``model.md``, :mod:`lightlayers.deploy.card_md`), under the same rules: a
card the tool did not write is never replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from lightlayers.commands._args import positive_int
from lightlayers.commands._json import json_safe

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# What study-conv says about inputs below 50x50 px (lightlayers.models.interface).
PADDING_WARNING = r".*zero-padding it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `lightlayers run`")
    p.add_argument("--model", help="export this model's trial (default: the best on validation)")
    p.add_argument("--seed", type=int, help="export this seed's trial (default: the best on "
                   "validation)")
    p.add_argument("--format", choices=sorted(FORMATS), default="onnx",
                   help="file format (default: onnx)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (ONNX only), calibrated on training images; "
                        "prints int8 and fp32 test accuracy, AUC and file sizes")
    p.add_argument("--calibration", type=positive_int, default=256, metavar="N",
                   help="training images drawn to calibrate --int8 (default: 256)")
    p.add_argument("--out", help="file to write (default: RUN_DIR/exports/"
                   "MODEL__seedS[.int8].onnx)")
    p.add_argument("--data", help="where the run's data is now, when it moved (checked to be "
                   "the same data by content)")
    p.add_argument("--cam-min-side", type=positive_int, default=None, metavar="N",
                   help="Grad-CAM output on the last layer whose map is at least N x N over "
                        "the image (default: 7)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (choice, verification, metrics, sizes)")



def _kb(n: int) -> str:
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.2f} MB"


def main(args: argparse.Namespace) -> int:
    # A DeployError is a user error (one line, exit 2): lightlayers.cli lists it.
    from lightlayers.cli import CliError

    if args.int8 and args.format != "onnx":
        raise CliError("--int8 needs --format onnx (int8 files are quantized with ONNX Runtime)")
    ext = FORMATS[args.format]
    if args.out:
        from lightlayers.outputs import check_output_file

        check_output_file(args.out, _inputs(args), is_export, "--out")
        _check_card_file(args)
    if args.out and Path(args.out).suffix.lower() != ext:
        # The name says what the file is: ONNX bytes under .pt would be loaded as TorchScript.
        other = next((f for f, e in FORMATS.items() if e == Path(args.out).suffix.lower()), None)
        raise CliError(f"--out {args.out}: a {args.format} export is a {ext} file; name it "
                       f"{Path(args.out).with_suffix(ext).name}"
                       + (f", or pass --format {other}" if other else ""))
    with warnings.catch_warnings():
        # The model was trained (and warned about) at this size; exporting it repeats that
        # warning on every call of the model.
        warnings.filterwarnings("ignore", message=PADDING_WARNING)
        result = export(args)
    if args.json:
        print(json.dumps(json_safe(result), indent=2, allow_nan=False))
    return 0


def export(args: argparse.Namespace) -> dict[str, Any]:
    from lightlayers.deploy import DeployError
    from lightlayers.deploy import export as ex
    from lightlayers.deploy.errors import require
    from lightlayers.deploy.trial import check_test_scores, trial_card
    from lightlayers.runfolder.trials import choose_trial

    # Known before any work: what this export needs beyond the core install (Captum checks
    # the file's Grad-CAM maps).
    for module in (("onnx", "onnxscript", "onnxruntime") if args.format == "onnx" else ()):
        require(module)
    require("captum")
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    trial, key, candidates = choose_trial(args.run_dir, args.model, args.seed)
    chosen = trial.chosen_on()
    say(f"{trial.label}: chosen on validation ({key} {chosen.get(key, float('nan')):.4f} at "
        f"epoch {chosen.get('epoch')}; best of {candidates} finished trial(s), test never "
        "looked at)")
    model = trial.build_model()
    card = trial_card(trial, model)
    # The last map for TorchScript, whose tracer fixes the batch size of a traced backward
    # pass, and for int8, where the backward pass's transposed convolutions stay float and
    # would double the weights the file holds.
    deployable, example = ex.deployable_for(
        model, card, finer_cam=args.format == "onnx" and not args.int8,
        cam_min_side=args.cam_min_side)
    card = card.replace(**ex.cam_fields(deployable))
    ds = trial.load_data(args.data)
    if list(ds.classes) != list(card.classes):
        raise DeployError(f"the data's classes {list(ds.classes)} differ from the checkpoint's "
                          f"{card.classes}; pass --data with the run's data")
    if args.format == "onnx":
        blob = ex.to_onnx(deployable, example, card)
    else:
        blob = ex.to_torchscript(deployable, example, card)
    run = ex.run_model(blob, args.format)
    check = ex.verify(run, deployable, ds.splits["val"], card)
    cam_text = ("no Grad-CAM output (no global average pooling)" if check.cam_rel_diff is None
                else f"Grad-CAM vs Captum {check.cam_rel_diff:.1e} (relative, limit "
                     f"{ex.CAM_TOLERANCE:.0e})")
    say(f"verified on {check.images} validation images: max |probability difference| vs "
        f"PyTorch {check.max_prob_diff:.1e} (limit {ex.FP32_TOLERANCE:.0e}); {cam_text}")
    if check.max_prob_diff > ex.FP32_TOLERANCE:
        raise DeployError(
            f"the {args.format} export of {trial.label} differs from its checkpoint by "
            f"{check.max_prob_diff:.2e} in probability (> {ex.FP32_TOLERANCE:.0e}); nothing "
            "written. Rerun with --debug and report it, or try the other --format")
    if check.cam_rel_diff is not None and check.cam_rel_diff > ex.CAM_TOLERANCE:
        raise DeployError(
            f"the Grad-CAM maps of the {args.format} export of {trial.label} differ from "
            f"Captum's by {check.cam_rel_diff:.2e} (relative, > {ex.CAM_TOLERANCE:.0e}): its "
            "head is not global pooling + affine; nothing written. Report it")
    test = ds.splits["test"]
    fp32 = ex.evaluate(run, test, card)
    from lightlayers.ledger import record_rescore

    record_rescore(trial, ds)  # one more look at the test split, under the trial's settings
    # Before any file is written: an fp32 file scoring otherwise than the trial recorded is
    # not that trial's model (int8 is expected to differ and is only shown).
    not_compared = check_test_scores(trial, fp32, f"fp32 {args.format} export")
    if not_compared:
        say(f"{trial.label}: {not_compared}")
    recorded = card.test_metrics
    rows = [(f"fp32 {args.format}", fp32, len(blob))]
    out_blob = blob
    int8 = None
    if args.int8:
        calib = ex.calibration_images(ds.splits["train"], card, args.calibration,
                                      seed=card.seed)
        out_blob = ex.quantize_int8(blob, calib, card)
        int8 = ex.evaluate(ex.run_model(out_blob), test, card)
        rows.append(("int8 onnx", int8, len(out_blob)))
    say(f"test split ({len(test)} images)   accuracy     AUC      size")
    for name, m, size in rows:
        say(f"  {name:24s} {m['accuracy']:8.4f} {_fmt(m['auc']):>8s}   {_kb(size)}"
            + (f" ({size / len(blob):.2f}x fp32)" if m is int8 else ""))
    say(f"  {'recorded (PyTorch)':24s} {_fmt(recorded.get('accuracy')):>8s} "
        f"{_fmt(recorded.get('auc')):>8s}")
    card_text = _model_card(args, trial, card, key, candidates, out_blob, len(test), int8)
    out = write_export(args, trial, out_blob, card_text)
    say(f"wrote {out} ({_kb(len(out_blob))}, {'int8' if args.int8 else 'fp32'}) and its "
        f"model card {out.with_suffix('.md').name}")
    return {
        "out": str(out), "model_card": str(out.with_suffix(".md")),
        "model": trial.model_name, "seed": trial.seed,
        "protocol": card.protocol, "format": args.format,
        "precision": "int8" if args.int8 else "fp32",
        "chosen_on": {"key": key, **chosen, "candidates": candidates},
        "verification": {"images": check.images, "max_prob_diff": check.max_prob_diff,
                         "cam_rel_diff": check.cam_rel_diff},
        "size_bytes": len(out_blob), "fp32_size_bytes": len(blob),
        "test": {"images": len(test),
                 "fp32": {"accuracy": fp32["accuracy"], "auc": fp32["auc"]},
                 "int8": None if int8 is None else {"accuracy": int8["accuracy"],
                                                    "auc": int8["auc"]},
                 "recorded": {"accuracy": recorded.get("accuracy"),
                              "auc": recorded.get("auc")}},
    }


def write_export(args: argparse.Namespace, trial: Any, blob: bytes,
                 card_text: str | None = None) -> Path:
    """The exported file: ``--out`` (a new path, or a file an earlier export wrote; never in a
    run folder or an input), else the run folder's own ``exports/`` folder; with
    ``card_text``, its Markdown model card beside it (``.md``), under the same rules. Both
    places are checked before either file is written."""
    from lightlayers.deploy.card_md import card_path, is_model_card
    from lightlayers.outputs import OutputFolder, write_output_file

    name = _default_name(args, trial)
    if args.out:
        if card_text is not None:
            _check_card_file(args)
        out = write_output_file(args.out, blob, _inputs(args), is_export, "--out")
        if card_text is not None:
            write_output_file(card_path(out), card_text, _inputs(args), is_model_card,
                              "model card")
        return out
    with OutputFolder(Path(trial.run_dir) / "exports", "exports", adopt=_adopt_exports,
                      what="exports folder") as folder:
        md = card_path(name).name
        if card_text is not None:
            folder.claim(md)
        out = folder.write(name, blob)
        if card_text is not None:
            folder.write(md, card_text)
        return out


def _default_name(args: argparse.Namespace, trial: Any) -> str:
    return (f"{trial.model_name}__seed{trial.seed}{'.int8' if args.int8 else ''}"
            f"{FORMATS[args.format]}")


def _check_card_file(args: argparse.Namespace) -> None:
    """The model card's path beside ``--out`` may be written (before any work is done)."""
    from lightlayers.deploy.card_md import card_path, is_model_card
    from lightlayers.outputs import check_output_file

    check_output_file(card_path(args.out), _inputs(args), is_model_card, "model card")


def _model_card(args: argparse.Namespace, trial: Any, card: Any, key: str, candidates: int,
                blob: bytes, test_images: int, int8: dict[str, Any] | None) -> str:
    """The Markdown card of the file about to be written (lightlayers.deploy.card_md)."""
    from lightlayers.deploy.card_md import model_card_markdown
    from lightlayers.runfolder.trials import find_trials

    size = (trial.row.get("config") or {}).get("train_size")
    siblings = [t for t in find_trials(trial.run_dir, trial.model_name)
                if (t.row.get("config") or {}).get("train_size") == size]
    name = Path(args.out).name if args.out else _default_name(args, trial)
    if int8 is not None:
        card = card.replace(precision="int8")
    return model_card_markdown(card, trial, siblings, file_name=name, file_format=args.format,
                               file_bytes=len(blob), test_images=test_images,
                               chosen_key=key, candidates=candidates, measured=int8)


def _inputs(args: argparse.Namespace) -> list[str]:
    return [args.run_dir, *([args.data] if args.data else [])]


def is_export(path: Path) -> bool:
    """A file ``lightlayers export`` wrote: it carries a model card lightlayers can read."""
    from lightlayers.deploy import DeployError
    from lightlayers.deploy import export as ex

    try:
        ex.read_card(path)
    except (DeployError, OSError, ValueError):
        return False
    return True


def _adopt_exports(folder: Path) -> set[str] | None:
    """``RUN/exports`` written before folders carried a manifest: its exported models."""
    from lightlayers.runfolder.layout import is_run_folder

    if not is_run_folder(folder.parent):
        return None
    return {p.name for p in folder.iterdir()
            if p.is_file() and not p.is_symlink() and is_export(p)}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
