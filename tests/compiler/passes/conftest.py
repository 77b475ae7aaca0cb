"""Make the shared pass-test helpers (pass_template, tiny_models) importable by their plain names.

This folder is a package (`__init__.py`), so pytest puts tests/compiler on sys.path, not this folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
