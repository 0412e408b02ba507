"""``python -m gradient_client``: the ``gradient-client`` command line."""

import sys

from gradient_client.cli import main

sys.exit(main())
