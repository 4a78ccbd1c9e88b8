"""Shared test helpers live in uniquely named modules of ``tests/lightning`` (``cam_events``:
quiet trainers and event-file reading; ``cam_tiny``: the tiny LightningModules), imported by
name from every test folder."""

from __future__ import annotations

import os
import sys

_HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lightning")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)
