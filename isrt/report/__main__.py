"""`python -m isrt.report RUN_DIR ...`: the command line of isrt.report.cli."""
import sys

from isrt.report.cli import main

sys.exit(main())
