#!/usr/bin/env bash
# Build the MONAI Label server environment: .venv-monailabel (or $1) beside the main environment.
#
# MONAI Label 0.8.x needs pydicom < 3 (through pydicom-seg); monai_ultraad needs pydicom 3. The MONAI Label venv
# holds monailabel's pins (pydicom 2.4.4, ..., monailabel_app/requirements.txt) and sees the MAIN environment's
# packages AFTER its own - torch, open_clip, SimpleITK, numpy and monai_ultraad, installed there with
# `pip install -c constraints.txt -e ".[dev]"`, which must be done first. The main environment may be a venv, a
# conda environment or the base interpreter: its site-packages folders are asked from its own python and added to
# the new venv by a .pth file (site.addsitedir, so that their own .pth files - editable installs - work too).
# `venv --system-site-packages` would not do: made from inside a venv it shares the BASE interpreter's packages,
# not the venv's.
# Every package is pinned in monailabel_app/requirements.txt and installed with --no-deps: monailabel and
# pydicom-seg declare numpy < 2 and other pins they do not need, and following them would break torch.
# bin/monailabel is replaced by a launcher that runs this venv's python (monailabel's own script runs whatever
# `python` is first on PATH), so the server starts without activating anything:
#     .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies <folder or DICOMweb URL>
#
# Usage: [PYTHON=/path/to/main/python] scripts/make_monailabel_venv.sh [VENV_DIR]
#   PYTHON defaults to the python of the active environment (python3, else python, on PATH). Idempotent; re-run
#   after changing requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-monailabel}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -c "import monai_ultraad, torch, open_clip, SimpleITK" 2>/dev/null || {
    echo "make_monailabel_venv: $PYTHON lacks the main environment; install it first: pip install -c constraints.txt -e '.[dev]'" >&2
    exit 2
}
# The main environment's package folders, in its own order (venv / conda / base alike).
MAIN_SITE_DIRS="$("$PYTHON" - <<'PY'
import site, sysconfig
dirs = []
for d in [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
    if d not in dirs:
        dirs.append(d)
print("\n".join(dirs))
PY
)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
VENV_ABS="$(cd "$VENV" && pwd)"
VENV_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
{
    echo "# written by scripts/make_monailabel_venv.sh: the main environment's packages, after this venv's own"
    while IFS= read -r dir; do
        [ -n "$dir" ] && [ "$dir" != "$VENV_SITE" ] && echo "import site; site.addsitedir(${dir@Q})"
    done <<< "$MAIN_SITE_DIRS"
} > "$VENV_SITE/zz_ultraad_main_env.pth"
# --ignore-installed: install these versions into the venv even where the main environment has others (monai
# above all: its venv copy hides monai/deploy).
"$VENV/bin/python" -m pip install -q --no-deps --ignore-installed -r monailabel_app/requirements.txt
# monailabel's bin/monailabel runs `python` from PATH: replace it with one that runs this venv's interpreter.
cat > "$VENV/bin/monailabel" <<SH
#!/usr/bin/env bash
# MONAI Label server of monai_ultraad (scripts/make_monailabel_venv.sh): always this venv's python.
exec "$VENV_ABS/bin/python" -m monailabel.main "\$@"
SH
chmod +x "$VENV/bin/monailabel"
# Smoke test: the server app, the UltraAD core and the app's own modules import with pydicom 2 (no pydicom 3 code),
# run from a clean environment (no PATH or PYTHONPATH help) through the launcher's interpreter.
env -i HOME="${HOME:-/tmp}" PATH=/usr/bin:/bin "$VENV/bin/python" - <<'PY'
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
echo "start it (no activation needed): $VENV/bin/monailabel start_server --app monailabel_app --studies <folder or DICOMweb URL>"
