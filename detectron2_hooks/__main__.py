"""``python -m detectron2_hooks``: the ``detectron2-gradcam`` command."""

import sys

from .cli import main

sys.exit(main())
