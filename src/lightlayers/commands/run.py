"""``lightlayers run``: train a study and record it (flags override the YAML)."""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="study YAML file (configs/*.yaml); flags override it")
    p.add_argument("--data", help="dataset path or short name (see `lightlayers data list`)")
    p.add_argument("--models", help="comma-separated model names (see `lightlayers models`)")
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--size", type=int, help="square image size in pixels")
    p.add_argument("--in-chans", type=int, choices=(1, 3))
    p.add_argument("--on-bad-image", choices=("error", "skip"),
                   help="undecodable image files: error (default) lists them and stops; skip "
                        "leaves them out and lists them in the run folder and the report")
    p.add_argument("--allow-missing-classes", action="store_true", default=None,
                   help="keep a dataset in which a class has no images in some split")
    p.add_argument("--protocol", choices=("seed", "improved"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one protocol setting, e.g. --set class_weighting=false or "
                        "--set augment.rotate_deg=0 (repeatable; see protocol_overrides)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--weights", help="transfer backbones: DEFAULT, a torchvision weights name, "
                                     "'none', or a local .pth/.safetensors state dict")
    p.add_argument("--out", help="run folder (default runs/study)")
    ray = p.add_argument_group("executor", "where trials run (see docs/ray.md)")
    ray.add_argument("--executor", choices=("local", "ray"),
                     help="local: one after another here (default); ray: one Ray task each "
                          "(pip install 'lightlayers[ray]')")
    ray.add_argument("--ray-address", help="join this Ray cluster ('auto' or HOST:PORT); "
                                           "default: start a local Ray instance")
    ray.add_argument("--gpus-per-trial", type=float,
                     help="GPUs per Ray trial; fractions (0.25) share one GPU (default 0)")
    ray.add_argument("--cpus-per-trial", type=int,
                     help="CPUs Ray reserves per trial, also its torch threads unless "
                          "--threads (default: --threads)")
    ray.add_argument("--max-retries", type=int,
                     help="resubmissions of a trial whose Ray worker died (default 2)")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.config import ConfigError, load_config, parse_overrides
    from lightlayers.data import DataError
    from lightlayers.store import StoreError
    from lightlayers.study import run_study

    try:
        overrides = parse_overrides(args.overrides)
        cfg = load_config(
            args.config, data=args.data, models=args.models, seeds=args.seeds,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, size=args.size,
            in_chans=args.in_chans, on_bad_image=args.on_bad_image,
            allow_missing_classes=args.allow_missing_classes, protocol=args.protocol,
            device=args.device, threads=args.threads, weights=args.weights, out=args.out,
            executor=args.executor, ray_address=args.ray_address,
            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
            max_retries=args.max_retries, protocol_overrides=overrides or None,
            report=False if args.no_report else None,
        )
        outcome = run_study(cfg, progress=not args.quiet)
    except (ConfigError, DataError, StoreError) as e:
        raise CliError(str(e)) from e
    c = outcome.counts
    print(f"{outcome.out_dir}: {c['done']} done, {c['failed']} failed "
          f"({outcome.ran} run now, {outcome.skipped} already done)", file=sys.stderr)
    if cfg.report and c["done"]:
        from lightlayers.report import ReportError, write_report

        try:
            result = write_report(outcome.out_dir, console=not args.quiet)
        except ReportError as e:
            # The trials are recorded already; a report problem must not hide that.
            print(f"lightlayers run: the report could not be written: {e}; the results are in "
                  f"{outcome.out_dir / 'results.db'}", file=sys.stderr)
        else:
            print(f"report: {result.html}", file=sys.stderr)
    return 1 if c["failed"] else 0
