# Shared by package_map.sh and build_map.sh (sourced, not run): the container engine and the two base images both
# routes start from. Each function is idempotent. Needs HERE (this folder) and WORK (a scratch folder); NICE may
# hold a `nice -n N` prefix.

# podman (+ runc, debootstrap; podman-docker when $1 is "with-docker") from apt, and /etc/containers/containers.conf
# for this kind of host: runc (crun fails on hybrid cgroups), cgroupfs, no default ulimits (setting rlimits is
# refused), host network, runtime "nvidia" -> runc (holoscan-cli's runner always asks for it).
ultraad_setup_podman() {
    local need=() c
    for c in podman runc debootstrap; do command -v "$c" >/dev/null || need+=("$c"); done
    if [ "${1:-}" = with-docker ] && ! dpkg -s podman-docker >/dev/null 2>&1; then need+=(podman-docker); fi
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive ${NICE:-} apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    local conf=/etc/containers/containers.conf
    if ! grep -qs '^nvidia = \["/usr/sbin/runc"\]' "$conf"; then
        [ -f "$conf" ] && cp "$conf" "$conf.before-ultraad-map"
        mkdir -p /etc/containers
        cat > "$conf" <<'CONF'
# written by monai_ultraad deploy_app/map/podman_base.sh (previous file, if any: containers.conf.before-ultraad-map)
[containers]
default_ulimits = []
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
[engine.runtimes]
nvidia = ["/usr/sbin/runc"]
CONF
    fi
}

# localdeb:bookworm: a Debian root made with debootstrap and imported (no registry to pull a base image from), from
# $DEBIAN_MIRROR or the first non-security mirror apt uses here.
ultraad_local_debian() {
    podman image exists localdeb:bookworm && return 0
    local mirror=${DEBIAN_MIRROR:-$( (cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) \
        | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+' | grep -v security | head -n1 || true)}
    ${NICE:-} debootstrap --variant=minbase bookworm "$WORK/root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$WORK/root" -c . | podman import - localdeb:bookworm >/dev/null
    rm -rf "$WORK/root"
}

# ultraad-mapbase:bookworm (base.Containerfile): python3, current pip, the host's extra CA certificates (the package
# proxy re-signs TLS), libcudart.so.13 (holoscan needs it to import).
ultraad_mapbase() {
    mkdir -p "$WORK/base"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/base/" 2>/dev/null \
        || cp /etc/ssl/certs/ca-certificates.crt "$WORK/base/host-bundle.crt"
    ${NICE:-} podman build -q -t ultraad-mapbase:bookworm -f "$HERE/base.Containerfile" "$WORK/base" >/dev/null
}
