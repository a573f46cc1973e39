"""``python -m encdec_ros`` runs the ``encdec`` command line."""

import sys

from encdec_ros.cli import main

sys.exit(main())
