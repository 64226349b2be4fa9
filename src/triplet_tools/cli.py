"""The ``triplet-tools`` command: one subcommand per module.

```
triplet-tools bench [options]     side-by-side benchmark (triplet_tools.benchmark)
```

Each subcommand's module provides ``add_arguments(parser)`` and ``run(args) -> int``; only the
module of the subcommand being run is imported.
"""

import argparse
import importlib
import sys

#: Subcommand -> (module, one-line help).
COMMANDS = {
    "bench": ("triplet_tools.benchmark", "loss + gradient time and peak memory against the peers"),
}


def main(argv=None):
    """Parses ``argv`` (default ``sys.argv[1:]``), runs the subcommand, returns its exit code.

    Example: ``triplet-tools bench --sizes 256 --backends jax --no-peers``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="triplet-tools", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        parser.parse_args(argv)  # prints the usage, or help, and exits
    module = importlib.import_module(COMMANDS[command][0])
    module.add_arguments(subparsers.choices[command])
    return module.run(parser.parse_args(argv))
