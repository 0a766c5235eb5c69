"""``python -m cri_shim`` is the ``cri-shim`` command."""

import sys

from cri_shim.cli import main

sys.exit(main())
