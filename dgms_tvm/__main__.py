"""``python -m dgms_tvm``: the ``dgms-tvm`` command."""

import sys

from .commands import main

sys.exit(main())
