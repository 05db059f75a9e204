from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'study-*'")
    p.add_argument("--num-classes", type=int, default=None)


def main(args: argparse.Namespace) -> int:
    import lightlayers as L

    print(f"{'model':28s} {'total':>12s} {'trainable':>12s}  description")
    for name in L.list_models(args.pattern):
        kw = {"weights": None} if name.startswith("transfer-") else {}
        model = L.create_model(name, num_classes=args.num_classes, **kw)
        c = L.count_params(model)
        print(f"{name:28s} {c.total:12,d} {c.trainable:12,d}  {model.model_info.description}")
    return 0
