"""``python -m triplet_tools`` runs the ``triplet-tools`` command."""

import sys

from triplet_tools.cli import main

sys.exit(main())
