"""``python -m land_gui``: the same as the ``land-gui`` command."""

import sys

from land_gui.app import main

sys.exit(main())
