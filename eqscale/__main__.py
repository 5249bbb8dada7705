"""``python -m eqscale`` runs the ``eqscale`` command."""

import sys

from eqscale.cli import main

sys.exit(main())
