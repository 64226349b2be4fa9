"""The ``triplet-tools`` command (also ``python -m triplet_tools``).

```
triplet-tools demo [--loss semihard|hard|pn|priming|soft] [--distance NAME] [--epochs N]
                   [--batch-size B] [--out DIR] [--seed S] [--data FILE] [--label-column NAME]
```

Each subcommand is one ``argparse`` subparser with a ``run`` function; add another with
``subparsers.add_parser(...)`` and ``set_defaults(run=...)`` in :func:`build_parser`. Bad
arguments and bad data end with one ``triplet-tools: error: ...`` line on stderr and exit
status 2, never a traceback.
"""

import argparse
import os
import sys

PROG = "triplet-tools"
#: Kept here, not imported from the library, so that ``--help`` does not import Keras.
LOSS_CHOICES = ("semihard", "hard", "pn", "priming", "soft")
DISTANCE_CHOICES = ("cosine", "euclidean_norm", "euclidean", "l2", "squared_euclidean", "sql2",
                    "manhattan", "l1")


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    # One line instead of argparse's usage block, like every other error here.
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return value


def build_parser():
    parser = _Parser(prog=PROG, description="Online-mined triplet losses for Keras 3.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = subparsers.add_parser(
        "demo", help="train and evaluate an embedding end to end",
        description="Trains a small embedding model with online mining on scikit-learn's "
                    "digits (or --data FILE), holding out 30%% of every class, and prints "
                    "retrieval metrics for raw features and the trained embedding; writes "
                    "pictures to --out. The Keras backend is KERAS_BACKEND's.")
    demo.add_argument("--loss", choices=LOSS_CHOICES, default="semihard",
                      help="semihard (default), hard (batch-hard), pn, priming, or soft "
                           "(semi-hard with softplus instead of the hinge)")
    demo.add_argument("--distance", choices=DISTANCE_CHOICES, default="cosine",
                      help="distance for the loss and for retrieval (default cosine)")
    demo.add_argument("--epochs", type=_positive_int, default=20, help="default 20")
    demo.add_argument("--batch-size", type=_positive_int, default=120,
                      help="rows per batch, split into P classes x K samples (default 120)")
    demo.add_argument("--out", default="demo-output",
                      help="folder for the pictures and metrics.json (default demo-output)")
    demo.add_argument("--seed", type=int, default=0, help="default 0")
    demo.add_argument("--data", metavar="FILE",
                      help=".npz with arrays x (N x D) and y (N), or .csv with a header row, "
                           "a 'label' column and numeric feature columns")
    demo.add_argument("--label-column", default="label",
                      help="the label column of a .csv file (default label)")
    demo.add_argument("--map", choices=("tsne", "pca"), default="tsne",
                      help="2-D map of the held-out points (default tsne)")
    demo.set_defaults(run=run_demo)
    return parser


def run_demo(args):
    from triplet_tools import demo

    demo.run(loss=args.loss, distance=args.distance, epochs=args.epochs,
             batch_size=args.batch_size, out=args.out, seed=args.seed, data=args.data,
             label_column=args.label_column, map_method=args.map)
    return 0


def main(argv=None):
    """Entry point; returns the exit status (0, or 2 after a one-line error on stderr).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Example:

    >>> main(["demo", "--data", "no-such-file.npz"])   # stderr: triplet-tools: error: no such file: ...
    2
    """
    try:
        args = build_parser().parse_args(argv)
        _import_keras()
        return args.run(args)
    except UsageError as error:
        return _fail(str(error))
    except ValueError as error:  # DataError and the library's argument checks
        return _fail(f"{PROG}: error: {error}")
    except KeyboardInterrupt:
        return _fail(f"{PROG}: interrupted")


def _import_keras():
    try:
        import keras  # noqa: F401
    except ImportError as error:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow (Keras' default)")
        raise UsageError(
            f"{PROG}: error: cannot load the Keras backend {backend}: {error}. Install one "
            "(pip install 'triplet-tools[jax]', [tensorflow] or [torch]) and set KERAS_BACKEND "
            "to it") from None


def _fail(message):
    print(" ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
