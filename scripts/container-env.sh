# Sourced by scripts/build-image.sh and the container test: the podman settings of this repo.
# CONTAINERS_CONF points podman at scripts/containers.conf unless the caller set one already.
# shellcheck shell=bash
NODESTAGE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$NODESTAGE_REPO/scripts/containers.conf}"
# The image name `make image` builds and the test runs (override to test another tag).
export NODESTAGE_IMAGE="${NODESTAGE_IMAGE:-localhost/nodestage:latest}"
# The base image the Dockerfile names; made locally from Debian packages when missing.
export NODESTAGE_BASE_IMAGE="${NODESTAGE_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}"
