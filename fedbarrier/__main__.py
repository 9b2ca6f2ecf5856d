"""``python -m fedbarrier`` is the ``fedbarrier`` command."""

import sys

from fedbarrier.cli import main

sys.exit(main())
