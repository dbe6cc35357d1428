"""`python -m isrt.eval ...`: the command line of isrt.eval.cli."""
import sys

from isrt.eval.cli import main

sys.exit(main())
