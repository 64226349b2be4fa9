"""The ``triplet-tools demo`` command: train an embedding end to end and show what it learned.

Never imported by the library itself. ``command`` trains and reports, from the pieces in
``parts`` (the losses on offer, the model, the held-out split); ``data`` loads the digits or
a ``.npz`` / ``.csv`` file, ``pictures`` draws the embedding map and the curves, ``cli``
parses the command line.
"""

__all__ = ["LOSSES", "run"]


def __getattr__(name):
    # Imported on use, so that the command (cli) can settle the Keras backend first.
    if name in __all__:
        from triplet_tools.demo import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
