"""`python -m resnetlab` runs the command-line interface."""

import sys

from resnetlab.cli import main

sys.exit(main())
