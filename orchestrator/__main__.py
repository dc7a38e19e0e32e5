"""``python -m orchestrator`` = the ``srcompress`` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
