"""Where the Hydra config tree is: conf/ at the repository root (the install is editable);
REPRO_CONF_DIR points elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (the install is editable)
CONF_DIR = Path(os.environ.get("REPRO_CONF_DIR", REPO_ROOT / "conf"))
