"""``python -m vincie_train.eval shapes ...``: ShapesBench without the ``vincie`` console script."""

import sys

from .cli import main

sys.exit(main())
