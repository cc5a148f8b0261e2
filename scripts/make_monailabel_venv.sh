#!/usr/bin/env bash
# Build the MONAI Label server environment: .venv-monailabel (or $1) beside the main environment.
#
# MONAI Label 0.8.x needs pydicom < 3 (through pydicom-seg); monai_ultraad needs pydicom 3. The venv is made with
# --system-site-packages so that torch, open_clip, SimpleITK, numpy and monai_ultraad (installed in the main
# environment with `pip install -c constraints.txt -e ".[dev]"`, which must be done first) are shared, while
# monailabel's pins (pydicom 2.4.4, ...) are installed into the venv and shadow the main ones there only.
# Every package is pinned in monailabel_app/requirements.txt and installed with --no-deps: monailabel and
# pydicom-seg declare numpy < 2 and other pins they do not need, and following them would break torch.
#
# Usage: scripts/make_monailabel_venv.sh [VENV_DIR]   (idempotent; re-run after changing requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-monailabel}"
PYTHON="${PYTHON:-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -c "import monai_ultraad, torch, open_clip, SimpleITK" 2>/dev/null || {
    echo "make_monailabel_venv: install the main environment first: pip install -c constraints.txt -e '.[dev]'" >&2
    exit 2
}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
# --ignore-installed: install these versions into the venv even where the main environment has others (monai
# above all: its venv copy hides monai/deploy).
"$VENV/bin/python" -m pip install -q --no-deps --ignore-installed -r monailabel_app/requirements.txt
# Smoke test: the server app, the UltraAD core and the app's own modules import with pydicom 2 (no pydicom 3 code).
"$VENV/bin/python" - <<'PY'
import sys
import pydicom
assert pydicom.__version__.startswith("2."), pydicom.__version__
import monailabel.app  # noqa: F401  (the FastAPI app: every endpoint and datastore)
import monai_ultraad.engine  # noqa: F401
sys.path.insert(0, "monailabel_app")
import lib.infers, lib.trainers, lib.activelearning, lib.datastore  # noqa: E401,F401
import monailabel
bad = [m for m in sys.modules if m.startswith(("highdicom", "monai.deploy", "monai_ultraad.dicom"))]
assert not bad, f"modules that need pydicom 3 were imported: {bad}"
print(f"MONAI Label {monailabel.__version__} environment ready (pydicom {pydicom.__version__})")
PY
echo "start it with: $VENV/bin/monailabel start_server --app monailabel_app --studies <folder or DICOMweb URL>"
