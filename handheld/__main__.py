"""`python -m handheld` is the `handheld` command."""

import sys

from handheld.cli import main

sys.exit(main())
