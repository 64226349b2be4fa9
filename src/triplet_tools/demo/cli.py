"""The ``triplet-tools`` command (also ``python -m triplet_tools``).

```
triplet-tools demo [--loss semihard|hard|pn|priming|soft] [--distance NAME] [--epochs N]
                   [--batch-size B] [--out DIR] [--seed S] [--data FILE] [--label-column NAME]
                   [--memory ROWS]
```

Each subcommand is one ``argparse`` subparser with a ``run`` function; add another with
``subparsers.add_parser(...)`` and ``set_defaults(run=...)`` in :func:`build_parser`. Bad
arguments and bad data end with one ``triplet-tools: error: ...`` line on stderr and exit
status 2, never a traceback.

The backend is settled before anything imports Keras (this module imports nothing that
does; ``triplet_tools/__init__.py`` leaves Keras unimported when its backend cannot load):
an unknown, missing or non-training backend is one error line naming the backends that
work and those installed; with no ``KERAS_BACKEND`` and no TensorFlow (Keras' default), the
one installed backend is used and a note says so (see ``triplet_tools._backend``).
"""

import argparse
import sys

from triplet_tools import _backend
from triplet_tools._validation import check_int

PROG = "triplet-tools"


class UsageError(Exception):
    """A problem the user can fix; printed as one line."""


class _Parser(argparse.ArgumentParser):
    # One line instead of argparse's usage block, like every other error here.
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _int_at_least(low):
    """An argparse type: a whole number ``>= low``."""

    def parse(text):
        try:
            return check_int(int(text), "value", minimum=low)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}; received {text!r}"
            ) from None

    return parse


def build_parser():
    """The argument parser (imports Keras: call it once the backend is settled)."""
    from triplet_tools.demo import command as demo
    from triplet_tools.demo import pictures as plots
    from triplet_tools.distances import DISTANCE_NAMES

    parser = _Parser(prog=PROG, description="Online-mined triplet losses for Keras 3.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parser = subparsers.add_parser(
        "demo",
        help="train and evaluate an embedding end to end",
        description="Trains a small embedding model with online mining on scikit-learn's "
        "digits (or --data FILE), holding out 30% of every class and 20% of the "
        "classes (with 6 or more), and prints retrieval metrics for raw features and "
        "the trained embedding; then indexes the held-out gallery, calibrates a "
        "threshold and reports how known queries are matched and unseen classes "
        "refused; writes pictures to --out. The Keras backend is KERAS_BACKEND's.",
    )
    demo_parser.add_argument(
        "--loss",
        choices=tuple(demo.LOSSES),
        default="semihard",
        help="semihard (default), hard (batch-hard), pn, priming, soft (semi-hard with "
        "softplus instead of the hinge), batch-all, tfa-semihard, multi-similarity, circle, "
        "soft-nn, lifted or supcon",
    )
    demo_parser.add_argument(
        "--distance",
        choices=DISTANCE_NAMES,
        default="cosine",
        help="distance for the loss and for retrieval (default cosine)",
    )
    demo_parser.add_argument("--epochs", type=_int_at_least(1), default=20, help="default 20")
    demo_parser.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=120,
        help="rows per batch, split into P classes x K samples (default 120)",
    )
    demo_parser.add_argument(
        "--out",
        default="demo-output",
        help="folder for the pictures and metrics.json (default demo-output)",
    )
    demo_parser.add_argument("--seed", type=_int_at_least(0), default=0, help="default 0")
    demo_parser.add_argument(
        "--data",
        metavar="FILE",
        help=".npz with arrays x (N x D) and y (N), or .csv with a header "
        "row, a 'label' column and numeric feature columns",
    )
    demo_parser.add_argument(
        "--label-column", default="label", help="the label column of a .csv file (default label)"
    )
    demo_parser.add_argument(
        "--map",
        choices=plots.MAP_METHODS,
        default="tsne",
        help="2-D map of the held-out points (default tsne)",
    )
    demo_parser.add_argument(
        "--memory",
        type=_int_at_least(0),
        default=0,
        metavar="ROWS",
        help="cross-batch memory: also mine against the last ROWS "
        "training embeddings (default 0: in-batch mining only)",
    )
    demo_parser.set_defaults(run=run_demo)
    return parser


def run_demo(args):
    from triplet_tools.demo import command as demo

    demo.run(
        loss=args.loss,
        distance=args.distance,
        epochs=args.epochs,
        batch_size=args.batch_size,
        out=args.out,
        seed=args.seed,
        data=args.data,
        label_column=args.label_column,
        map_method=args.map,
        memory=args.memory,
    )
    return 0


def main(argv=None):
    """Entry point; returns the exit status (0, or 2 after a one-line error on stderr).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Example:

    >>> main(["demo", "--data", "no-such-file.npz"])   # stderr: one "error: no such file" line
    2
    """
    try:
        note = _backend.choose_for_command()
        if note:
            print(f"{PROG}: {note}", file=sys.stderr)
        args = build_parser().parse_args(argv)
        return args.run(args)
    except UsageError as error:
        return _fail(str(error))
    except ValueError as error:  # DataError and the library's argument checks
        return _fail(f"{PROG}: error: {error}")
    except KeyboardInterrupt:
        return _fail(f"{PROG}: interrupted")


def _fail(message):
    print(" ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
