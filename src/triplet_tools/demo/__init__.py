"""The ``triplet-tools demo`` command: train an embedding end to end and show what it learned.

Never imported by the library itself. ``command`` trains and reports, ``data`` loads the
digits or a ``.npz`` / ``.csv`` file, ``pictures`` draws the embedding map and the curves,
``cli`` parses the command line.
"""

from triplet_tools.demo.command import LOSSES, run

__all__ = ["LOSSES", "run"]
