"""``lightlayers weights``: list the transfer models' pretrained weights, fetch them ahead of time.

``fetch`` downloads into torch's hub cache (``$TORCH_HOME/hub/checkpoints``) and checks each
file against the SHA-256 prefix in its official name, e.g. on a login node before a Ray job
whose workers have no network (the driver then sends the weights to the workers).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="transfer models, their weights files and whether each is "
                                     "in the cache")
    ls.add_argument("--json", action="store_true", help="one JSON object per model")
    ls.add_argument("--verify", action="store_true",
                    help="also check each cached file's SHA-256 (reads the files)")
    fetch = sub.add_parser("fetch", help="download and verify weights into the cache")
    fetch.add_argument("models", nargs="+", metavar="MODEL",
                       help="transfer model names or patterns (transfer-inception_v3, "
                            "'transfer-*')")
    fetch.add_argument("--weights", default="DEFAULT",
                       help="a torchvision weights name (default: each model's DEFAULT)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")


def _transfer_models(patterns: list[str]) -> list[str]:
    from lightlayers.cli import CliError
    from lightlayers.models import list_models, model_info

    known = [m for m in list_models("transfer-*") if model_info(m).extra.get("takes_weights")]
    chosen: list[str] = []
    for pat in patterns:
        matches = list_models(pat) if any(c in pat for c in "*?[") else [pat]
        for name in matches:
            if name not in known:
                raise CliError(f"{name!r} takes no pretrained weights; transfer models: "
                               + ", ".join(known))
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise CliError(f"no transfer model matches {' '.join(patterns)}")
    return chosen


def _rows(verify: bool) -> list[dict]:
    from lightlayers.models import list_models
    from lightlayers.models.weights import hash_prefix, hub_file, official_weights, sha256_file

    rows = []
    for name in list_models("transfer-*"):
        w = official_weights(name.removeprefix("transfer-"))
        path = hub_file(w.url)
        row = {"model": name, "weights": str(w), "file": str(path),
               "size_mb": w.meta.get("_file_size"), "cached": path.is_file(), "verified": None}
        if verify and path.is_file():
            row["verified"] = sha256_file(path).startswith(hash_prefix(w.url) or "")
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.models.weights import WeightsError

    if args.action == "list":
        rows = _rows(args.verify)
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        for r in rows:
            state = "missing"
            if r["cached"]:
                state = {None: "cached", True: "cached, verified",
                         False: "cached, CHECKSUM DIFFERS"}[r["verified"]]
            size = f"{r['size_mb']:.1f} MB" if r["size_mb"] else ""
            print(f"{r['model']:30s} {r['weights']:42s} {size:>9s}  {state:24s} {r['file']}")
        return 0

    from lightlayers.models.transfer import fetch

    failed = 0
    for name in _transfer_models(args.models):
        try:
            rw = fetch(name, args.weights, progress=not args.quiet)
        except WeightsError as e:
            print(f"lightlayers weights fetch: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        check = "SHA-256 verified" if rw.verified else "SHA-256 differs from its official name"
        print(f"{name}: {rw.label} -> {rw.file} ({check})")
    if failed:
        raise CliError(f"{failed} of the requested weights could not be fetched (see above)")
    return 0
