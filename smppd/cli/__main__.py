"""``python -m smppd.cli``: the ``smppd`` command."""

import sys

from .main import main

sys.exit(main())
