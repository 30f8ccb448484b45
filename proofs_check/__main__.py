"""``python -m proofs_check``: see :mod:`proofs_check.cli`."""

import sys

from proofs_check.cli import main

sys.exit(main())
