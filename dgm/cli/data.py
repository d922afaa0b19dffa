"""``dgm-data``: get and inspect the data sets.

``dgm-data fetch fashion-mnist --root DIR`` places Fashion-MNIST from its Debian package (no
internet beyond the Debian mirrors); ``dgm-data info --dataset NAME --root DIR`` loads a data set
as training sees it and prints its per-class counts, a quick check that a root is complete.

Exit status (:mod:`dgm.cli.boundary`): 0 done; 2 a bad command line, or a data file that is
missing or damaged (one line ``dgm-data: error: ...`` naming the file and what is wrong with it)
or a fetch that failed; 130 interrupted; 1 a bug (traceback).
"""

from __future__ import annotations

import argparse
import sys

from .boundary import Parser, console_script

FETCHABLE = ("fashion-mnist",)


def _parser() -> argparse.ArgumentParser:
    from dgm.data import DATASETS

    parser = Parser(prog="dgm-data", description="Get and inspect the data sets of dgm.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download a data set from the Debian archive into --root")
    fetch.add_argument("dataset", choices=FETCHABLE)
    fetch.add_argument("--root", required=True, help="data root (the same as dgm-train --data-root)")
    info = sub.add_parser("info", help="load a data set and print its class counts")
    info.add_argument("--dataset", required=True, choices=DATASETS)
    info.add_argument("--root", default=None, help="data root (default: ./data; unused for mnist5k)")
    info.add_argument("--download", action="store_true", help="let torchvision download missing files")
    info.add_argument("--image-size", type=int, default=32)
    return parser


def _info(args) -> None:
    from dgm.data import load_dataset

    train, test = load_dataset(args.dataset, args.root, download=args.download, image_size=args.image_size)
    print(f"{args.dataset}: {len(train)} train, {len(test)} test images of {train.channels}x{train.image_size}"
          f"x{train.image_size}, {train.num_classes} classes, pixels in "
          f"[{float(train.images.min()):.3f}, {float(train.images.max()):.3f}]")
    width = max(len(name) for name in train.classes)
    print(f"{'label':>5}  {'class':<{width}}  {'train':>7}  {'test':>7}")
    for label, (name, n_train, n_test) in enumerate(zip(train.classes, train.class_counts().tolist(),
                                                       test.class_counts().tolist())):
        print(f"{label:>5}  {name:<{width}}  {n_train:>7}  {n_test:>7}")


@console_script("dgm-data")
def main(argv: list[str] | None) -> None:
    """Run ``dgm-data`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "fetch":
        from dgm.data.fetch import fetch_fashion_mnist

        for path in fetch_fashion_mnist(args.root):
            print(f"wrote {path}")
    else:
        _info(args)


if __name__ == "__main__":
    sys.exit(main())
