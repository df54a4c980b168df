#!/usr/bin/env bash
# Builds the nodestage container image with podman (`make image`).
#
# - The base image the Dockerfile names (debian:bookworm-slim) is made locally with
#   mmdebstrap from this machine's Debian mirror when podman does not have it, since
#   container registries may be unreachable; the build then runs with --pull=never.
# - This machine's pip configuration (local wheel folders, extra indexes, constraints,
#   the CA bundle of its TLS proxy) is handed to the build as a generated pip.conf,
#   mounted read-only with every local folder it names, so the image resolves packages
#   exactly as `make venv` does. Nothing of it stays in the image.
# - --format docker keeps the HEALTHCHECK (the OCI format drops it).
#
# Idempotent: a second run reuses the base image and podman's layer cache.
# Environment: NODESTAGE_IMAGE (tag), TORCH_VARIANT (cpu | cu128 ...), PYTHON (for `pip config`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/container-env.sh
source scripts/container-env.sh

for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool not found; install it with: apt-get install -y podman buildah mmdebstrap runc" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/nodestage-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- base image
if ! podman image exists "$NODESTAGE_BASE_IMAGE"; then
  # the machine's own mirror lines (deb822 file, else sources.list), else Debian's default mirror
  mirror=()
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ] && grep -qE '^[^#]*(deb |URIs:)' "$f"; then mirror=("$f"); break; fi
  done
  echo "base image $NODESTAGE_BASE_IMAGE missing: mmdebstrap bookworm (minbase) from ${mirror[*]:-the default mirror}"
  start=$SECONDS
  mmdebstrap --variant=minbase --quiet bookworm "$work/rootfs.tar" "${mirror[@]}"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$NODESTAGE_BASE_IMAGE" >/dev/null
  rm -f "$work/rootfs.tar"
  echo "base image made in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- pip config for the build
# `pip config list` prints section.key='value' (':env:' for PIP_* variables): write them as one
# pip.conf, the CA bundle copied beside it, and mount every local path the values name.
python="${PYTHON:-python3}"
pipdir="$work/pip"
mkdir -p "$pipdir"
mounts=()
build_args=()
if "$python" -m pip config list >"$work/pip-config.txt" 2>/dev/null && [ -s "$work/pip-config.txt" ]; then
  "$python" - "$work/pip-config.txt" "$pipdir" >"$work/pip-paths.txt" <<'PY'
import configparser, re, shutil, sys
from pathlib import Path

listing, out = Path(sys.argv[1]), Path(sys.argv[2])
conf = configparser.ConfigParser()
paths = set()
for line in listing.read_text().splitlines():
    m = re.match(r"^([^.=]*)\.([^=]+)='(.*)'$", line)
    if not m:
        continue
    section, key, value = m.groups()
    section = "global" if section in (":env:", "") else section
    if key == "cert":
        if Path(value).is_file():  # the proxy's CA: copied next to pip.conf, mounted with it
            shutil.copyfile(value, out / "ca.crt")
            value = "/etc/nodestage-build-pip/ca.crt"
        else:
            continue
    else:
        for word in value.split():
            path = word.removeprefix("file://")
            if path.startswith("/") and Path(path).exists():
                paths.add(str(Path(path).parent if path.endswith("/simple") else path))
    if not conf.has_section(section):
        conf.add_section(section)
    conf.set(section, key, value)
with open(out / "pip.conf", "w") as f:
    conf.write(f)
print("\n".join(sorted(paths)))
PY
  mounts+=(-v "$pipdir:/etc/nodestage-build-pip:ro")
  while IFS= read -r p; do [ -n "$p" ] && mounts+=(-v "$p:$p:ro"); done <"$work/pip-paths.txt"
  # the Dockerfile reads PIP_CONFIG_FILE as a build argument: set while building, absent from the image
  build_args+=(--build-arg PIP_CONFIG_FILE=/etc/nodestage-build-pip/pip.conf)
  # torch comes from where this machine's pip finds it (as `make venv` does), not from download.pytorch.org
  build_args+=(--build-arg TORCH_INDEX_URL=)
fi
[ -n "${TORCH_VARIANT:-}" ] && build_args+=(--build-arg "TORCH_VARIANT=$TORCH_VARIANT")

# ---------------------------------------------------------------- build
echo "building $NODESTAGE_IMAGE"
start=$SECONDS
podman build --pull=never --format docker --network host --layers \
  "${mounts[@]}" "${build_args[@]}" \
  -t "$NODESTAGE_IMAGE" -f Dockerfile .
# earlier builds of this image, untagged by this one, go; the layers of this one stay as the cache
podman image prune -f --filter label=org.opencontainers.image.title=nodestage >/dev/null
echo "built $NODESTAGE_IMAGE in $((SECONDS - start)) s ($(podman image inspect --format '{{.Size}}' "$NODESTAGE_IMAGE") bytes)"
