"""The OpenMP spin setting skinapp makes on import (docs/experiments.md, "The slow mode with PyTorch in the loop")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import skinapp, os, torch; print(os.environ.get('GOMP_SPINCOUNT'))"  # as app.py and the CLI do


@pytest.mark.parametrize("given, expected", [(None, "10000"), ("5", "5")])
def test_importing_skinapp_sets_gomp_spincount_before_torch_loads_unless_the_user_did(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True)
    assert out.stdout.strip() == expected

