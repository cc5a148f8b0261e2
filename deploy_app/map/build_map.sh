#!/usr/bin/env bash
# Fallback: build the UltraAD MONAI Application Package (MAP) with podman from a hand-written Containerfile, without
# holoscan-cli and without any registry. The MONAI Deploy packager route is package_map.sh (same layout).
#
#   sudo deploy_app/map/build_map.sh [TAG]        (default TAG: ultraad-map:0.1.0)
#   podman run --rm -v IN:/var/holoscan/input:ro -v OUT:/var/holoscan/output -v MODELS:/opt/holoscan/models:ro TAG
#
# Steps: (1) podman set up to run here (runc, cgroupfs, no ulimits, host network); (2) a Debian bookworm root made
# with debootstrap and imported as localdeb:bookworm; (3) the base image (python, CA certificates, CUDA runtime
# library that holoscan needs to import); (4) the MAP layout with this repository's wheel and the app.
# Local wheel folders of the host (/opt/wheels, /opt/pypi, /opt/pypi-more), when present, are mounted read-only into
# the build so that pip takes torch from them instead of downloading it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TAG=${1:-ultraad-map:0.1.0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# shellcheck source=podman_base.sh
source "$HERE/podman_base.sh"
echo "== 1/4 container engine"
ultraad_setup_podman
echo "== 2/4 local Debian base (localdeb:bookworm)"
ultraad_local_debian
echo "== 3/4 base image (ultraad-mapbase:bookworm)"
ultraad_mapbase

echo "== 4/4 MAP image ($TAG)"
ctx="$WORK/map"
mkdir -p "$ctx/app" "$ctx/wheels"
(cd "$REPO/deploy_app" && tar --exclude=__pycache__ --exclude=./map -c .) | tar -C "$ctx/app" -x
python3 -m pip wheel --no-deps --no-build-isolation -q -w "$ctx/wheels" "$REPO"
cp "$HERE/tools" "$HERE/app.json" "$HERE/pkg.json" "$ctx/"
volumes=()
index=""
links=""
for d in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$d" ] || continue
    volumes+=(-v "$d:$d:ro")
    if [ -d "$d/simple" ]; then index="$index file://$d/simple"; else links="$links $d"; fi
done
podman build -t "$TAG" "${volumes[@]}" --build-arg PIP_EXTRA_INDEX_URL="${index# }" \
    --build-arg PIP_FIND_LINKS="${links# }" -f "$HERE/Containerfile" "$ctx"
podman image ls "$TAG"
