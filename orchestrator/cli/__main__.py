"""``python -m orchestrator.cli`` = the ``srcompress`` command (the Ray Jobs entrypoint uses this form)."""

import sys

from orchestrator.cli import main

sys.exit(main())
