"""``python -m varattn``: the ``varattn`` command."""

import sys

from varattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
