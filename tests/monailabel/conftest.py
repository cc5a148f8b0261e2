"""Helpers of the MONAI Label tests; the servers (Orthanc, MONAI Label) are in monailabel_servers.py."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest runs with --import-mode=importlib: make monailabel_servers importable by the test modules beside it
sys.path.insert(0, str(Path(__file__).resolve().parent))
