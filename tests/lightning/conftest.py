"""GradCAMCallback tests. Helpers live in uniquely named modules (``cam_tiny``: the
module-level LightningModules and data; ``cam_events``: trainers and event reading), imported
by name, since other test folders have their own ``conftest``."""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
