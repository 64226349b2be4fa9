"""``python -m triplet_tools``: the same as the ``triplet-tools`` command."""

import sys

from triplet_tools.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
