"""``python -m lightning_gradcam``: the ``lightning-gradcam`` command."""

import sys

from .cli import main

sys.exit(main())
