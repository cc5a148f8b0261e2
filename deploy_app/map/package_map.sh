#!/usr/bin/env bash
# Package the UltraAD deploy app as a MONAI Application Package (MAP) with the MONAI Deploy packager
# (`monai-deploy package`, holoscan-cli 4.2), on a Debian 12 machine whose network reaches only PyPI and Debian
# (no container registry, no NVIDIA download site, no GPU needed). As root, from anywhere:
#
#   deploy_app/map/package_map.sh [--self-check] [NAME:TAG]      (default ultraad-map:0.1.0)
#   -> image localhost/NAME-x64-workstation-dgpu-linux-amd64:TAG (printed last)
#   --self-check: then run the image on a mixed study of real files with podman and compare it with the host app
#   (tests/deploy/test_map.py: exit codes, report, whole sets, dciodvfy, lock, `podman stop`, read-only / full
#   output folder; about 6 minutes on 2 cores; needs this repository's Python environment and ../shared/data)
#
# Steps (each idempotent; a second run reuses what is there and podman's layer cache):
#  1. podman (+ podman-docker, runc, debootstrap) from apt; /etc/containers/containers.conf for this kind of host:
#     runc (crun fails on hybrid cgroups), cgroupfs, no default ulimits (setting rlimits is refused), host network,
#     runtime "nvidia" -> runc (holoscan-cli's runner always asks for it).
#  2. localdeb:bookworm: a Debian root from debootstrap, imported (no registry to pull a base image from).
#  3. ultraad-mapbase:bookworm (base.Containerfile): python3, current pip, the host's extra CA certificates (the
#     package proxy re-signs TLS), libcudart.so.13 (holoscan needs it to import).
#  4. ultraad-mapruntime:VERSION (runtime.Containerfile): + deploy_app/requirements.txt + this repository's wheel
#     (`pip wheel --no-deps .`); torch/torchvision/NVIDIA wheels come from the local wheel folders when present.
#  5. holoscan-cli 4.2.0 in its own venv ($ULTRAAD_MAP_VENV, default <repo>/.venv-map, git-ignored), with
#     monai-deploy-app-sdk 4.0.0 and holoscan-cu13 4.6.0 (--no-deps, + wheel-axle-runtime that its .pth needs: the
#     packager only reads their versions, holoscan-cu13's is the key of artifacts.json);
#     its Dockerfile template patched for a Debian base without NVIDIA's apt repository (patch_holoscan_template.py).
#  6. `docker` shim (docker-buildx-shim: buildx -> podman build) and a GPU-less `nvidia-smi` in
#     $ULTRAAD_MAP_TOOLS/bin (default /usr/local/lib/ultraad-map/bin), first on PATH only for monai-deploy commands.
#  7. monai-deploy package deploy_app --config deploy_app/app.yaml --tag NAME:TAG --platform x86_64
#       --source deploy_app/map/artifacts.json --base-image localhost/ultraad-mapruntime:VERSION
#
# Heavy steps run under `nice -n 19`. Environment: DEBIAN_MIRROR (debootstrap mirror; default: the one apt uses),
# ULTRAAD_MAP_WHEEL_DIRS (local wheel folders, default "/opt/wheels /opt/pypi /opt/pypi-more").
# Run the result:
#   podman run --rm -v IN:/var/holoscan/input:ro -v OUT:/var/holoscan/output -v MODELS:/opt/holoscan/models:ro IMAGE
# (OUT writable by uid 1000). Fallback without holoscan-cli: build_map.sh (same layout, hand-written Containerfile).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SELF_CHECK=0
if [ "${1:-}" = --self-check ]; then SELF_CHECK=1; shift; fi
TAG=${1:-ultraad-map:0.1.0}
NAME=${TAG%%:*}
VERSION=$([ "$NAME" = "$TAG" ] && echo latest || echo "${TAG##*:}")
APP_VERSION=$(sed -n 's/^ *version: *//p' "$REPO/deploy_app/app.yaml" | head -n1)
RUNTIME_IMAGE=localhost/ultraad-mapruntime:${APP_VERSION:-0.1.0}
VENV=${ULTRAAD_MAP_VENV:-$REPO/.venv-map}
TOOLS=${ULTRAAD_MAP_TOOLS:-/usr/local/lib/ultraad-map}
WHEEL_DIRS=${ULTRAAD_MAP_WHEEL_DIRS:-/opt/wheels /opt/pypi /opt/pypi-more}
HOLOSCAN_CLI=holoscan-cli==4.2.0
SDK_PINS=$(grep -E '^(monai-deploy-app-sdk|holoscan-cu13)==' "$REPO/deploy_app/requirements.txt" | sed 's/ *#.*//')
NICE="nice -n 19"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ "$(id -u)" = 0 ] || { echo "package_map.sh: run as root (podman, apt, /etc/containers)" >&2; exit 2; }

# shellcheck source=podman_base.sh
source "$HERE/podman_base.sh"
echo "== 1/7 container engine (podman)"
ultraad_setup_podman with-docker
echo "== 2/7 local Debian root image (localdeb:bookworm)"
ultraad_local_debian
echo "== 3/7 base image (ultraad-mapbase:bookworm)"
ultraad_mapbase

echo "== 4/7 runtime image for --base-image ($RUNTIME_IMAGE)"
mkdir -p "$WORK/runtime/wheels"
cp "$REPO/deploy_app/requirements.txt" "$REPO/constraints.txt" "$WORK/runtime/"
# the wheel is built from a copy of the checkout's files: a setuptools build/ folder left in the checkout would
# otherwise put modules that no longer exist into the image (seen: a deleted module shipped, the self-check skipped)
mkdir -p "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$WORK/src"
$NICE python3 -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/runtime/wheels" "$WORK/src"
python3 - "$WORK/runtime" <<'PY'
import sys, zipfile
from pathlib import Path
from email.parser import Parser
ctx = Path(sys.argv[1])
wheel = next((ctx / "wheels").glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
reqs = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
(ctx / "project-requirements.txt").write_text("".join(r + "\n" for r in reqs))
PY
volumes=()
local_wheels=()
for d in $WHEEL_DIRS; do [ -d "$d" ] && volumes+=(-v "$d:$d:ro"); done
# torch and the CUDA wheels it needs, in the versions requirements.txt and torch pin (first match in the folders)
torch_v=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$REPO/deploy_app/requirements.txt")
vision_v=$(sed -n 's/^torchvision==\([^ ]*\).*/\1/p' "$REPO/deploy_app/requirements.txt")
for pattern in "torch-$torch_v-cp311-*manylinux*_x86_64.whl" "torchvision-$vision_v-cp311-*manylinux*_x86_64.whl" \
               "triton-3.8.0-cp311-*.whl" "cuda_toolkit-13.0.3.0-*.whl" "nvidia_cuda_runtime-13.0.*.whl" \
               nvidia_cublas-13.1.1.3-*.whl nvidia_cuda_cupti-13.0.*.whl nvidia_cuda_nvrtc-13.0.*.whl \
               nvidia_cudnn_cu13-9.24.0.43-*.whl nvidia_cufft-12.0.*.whl nvidia_cufile-1.15.*.whl \
               nvidia_curand-10.4.*.whl nvidia_cusolver-12.0.*.whl nvidia_cusparse-12.6.*.whl \
               nvidia_cusparselt_cu13-0.8.1-*.whl nvidia_nccl_cu13-2.30.7-*.whl nvidia_nvshmem_cu13-3.4.5-*.whl \
               nvidia_nvtx-13.0.*.whl nvidia_nvjitlink-13.*.whl; do
    for d in $WHEEL_DIRS; do
        f=$(compgen -G "$d/files/$pattern" || compgen -G "$d/$pattern" || true)
        if [ -n "$f" ]; then local_wheels+=("$(echo "$f" | head -n1)"); break; fi
    done
done
echo "   local wheels: ${#local_wheels[@]} (the rest from PyPI)"
$NICE podman build -t "$RUNTIME_IMAGE" "${volumes[@]}" --build-arg LOCAL_WHEELS="${local_wheels[*]}" \
    -f "$HERE/runtime.Containerfile" "$WORK/runtime"

echo "== 5/7 holoscan-cli 4.2.0 venv ($VENV)"
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('holoscan-cli') == '4.2.0'" 2>/dev/null; then
    python3 -m venv "$VENV"
    $NICE "$VENV/bin/pip" install -q "$HOLOSCAN_CLI"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -c "import importlib.metadata as m; m.version('holoscan-cu13'); m.version('monai-deploy-app-sdk')" \
    2>/dev/null || $NICE "$VENV/bin/pip" install -q --no-deps $SDK_PINS
"$VENV/bin/python" -c "import wheel_axle.runtime, filelock" 2>/dev/null || $NICE "$VENV/bin/pip" install -q wheel-axle-runtime
"$VENV/bin/python" "$HERE/patch_holoscan_template.py"

echo "== 6/7 docker shim and nvidia-smi ($TOOLS/bin)"
install -D -m 0755 "$HERE/docker-buildx-shim" "$TOOLS/bin/docker"
install -D -m 0755 "$HERE/nvidia-smi-none" "$TOOLS/bin/nvidia-smi"
# `monai-deploy run` only checks that a docker-buildx plugin exists under $HOME/.docker/cli-plugins: give it one in a
# HOME of its own (HOME=$TOOLS/home for that command), so the system's docker CLI keeps its own plugins.
mkdir -p "$TOOLS/home/.docker/cli-plugins"
ln -sf "$TOOLS/bin/docker" "$TOOLS/home/.docker/cli-plugins/docker-buildx"

echo "== 7/7 monai-deploy package"
cd "$REPO"
start=$(date +%s)
PATH="$TOOLS/bin:$VENV/bin:$PATH" $NICE monai-deploy package deploy_app --config deploy_app/app.yaml --tag "$TAG" \
    --platform x86_64 --source "$HERE/artifacts.json" --base-image "$RUNTIME_IMAGE"
IMAGE="localhost/$NAME-x64-workstation-dgpu-linux-amd64:$VERSION"
podman image exists "$IMAGE" || { echo "package_map.sh: $IMAGE was not built" >&2; exit 1; }
echo "packaged in $(( $(date +%s) - start )) s"
podman image ls "$IMAGE"
cat <<RUN
run it (OUT writable by uid 1000; extra app options after the image name or as -e ULTRAAD_* variables):
  podman run --rm -v IN:/var/holoscan/input:ro -v OUT:/var/holoscan/output -v MODELS:/opt/holoscan/models:ro $IMAGE
  HOME=$TOOLS/home PATH=$TOOLS/bin:$VENV/bin:\$PATH monai-deploy run $IMAGE -i IN -o OUT --network podman --uid 1000 --gid 1000
RUN
if [ "$SELF_CHECK" = 1 ]; then
    echo "== self-check: tests/deploy/test_map.py on $IMAGE"
    ULTRAAD_MAP_IMAGE=$IMAGE PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" $NICE python3 -m pytest -p no:cacheprovider \
        -q -rs -s "$REPO/tests/deploy/test_map.py" || { echo "package_map.sh: self-check FAILED for $IMAGE" >&2; exit 1; }
fi
echo "$IMAGE"
