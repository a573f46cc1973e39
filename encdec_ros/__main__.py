"""``python -m encdec_ros`` runs the ``encdec`` command line."""

import sys

from .cli import main

sys.exit(main())
