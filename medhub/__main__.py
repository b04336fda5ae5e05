"""``python -m medhub`` runs the command line."""

import sys

from medhub.cli import main

sys.exit(main())
