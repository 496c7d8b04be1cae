"""``python -m vmbench``: the same as the ``vmbench`` command."""

import sys

from vmbench.cli import main

sys.exit(main())
