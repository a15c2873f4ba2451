"""``python -m lvlm_probe ...`` runs the ``lvlm-probe`` command line."""

import sys

from lvlm_probe.cli import main

sys.exit(main())
