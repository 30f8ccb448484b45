import sys

from amasim.cli import main

sys.exit(main())
