# nodestage: the DICOM node (lymph-node staging on FDG-PET/CT) as a container image.
#
# Build
#   make image                      # podman, as the tests do (scripts/build-image.sh)
#   docker build -t nodestage .     # anywhere with registry access: CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t nodestage:cuda .
#                                   # NVIDIA GPUs: torch from download.pytorch.org/whl/cu128;
#                                   # run with --gpus all (docker) or --device nvidia.com/gpu=all
#                                   # (podman + CDI) and set pipeline.anatomy.totalseg.device: gpu,
#                                   # pipeline.lesions.nnunet.device: cuda
# The pins are the Makefile's: torch first, alone, then the project with -c constraints.txt
# (the lock file; its torch and torchvision pins keep anything from swapping torch for another build).
#
# Run (see deploy/docker-compose.yml and README "Container")
#   docker run -d --name nodestage -p 11112:11112 --shm-size=2g \
#     -v nodestage-data:/var/lib/nodestage \
#     -v /srv/nodestage/weights:/opt/nodestage/weights:ro \
#     -v /srv/nodestage/config:/etc/nodestage:ro nodestage
#   --shm-size: nnU-Net (lesions.backend nnunet, and TotalSegmentator, which is nnU-Net) passes
#   arrays between worker processes through /dev/shm; Docker's 64 MB default makes them die with
#   "Bus error". Give 2 GB or more for the TotalSegmentator / nnU-Net backends.
#
# Volumes
#   /etc/nodestage           config.yaml (default: deploy/config.silent.yaml, baked in)
#   /var/lib/nodestage       spool, archive, work, the SQLite index, ledger.csv, TotalSegmentator's home
#   /opt/nodestage/weights   model weights, read-only: totalsegmentator/ and nnunet/ (deploy/WEIGHTS.md).
#                            Nothing is ever downloaded at run time.
FROM debian:bookworm-slim AS runtime

# the node runs as this user; volumes must be writable by this uid (podman: -v DIR:/var/lib/nodestage:U)
ARG NODESTAGE_UID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# python3 for the venv, dcmtk (echoscu/storescu/findscu for operators), tini as PID 1
# (forwards SIGTERM, reaps the pipeline's worker processes)
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv dcmtk tini >/dev/null \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid "$NODESTAGE_UID" --user-group --home-dir /var/lib/nodestage --shell /usr/sbin/nologin nodestage \
 && install -d -o nodestage -g nodestage -m 0750 /var/lib/nodestage \
 && install -d -m 0755 /opt/nodestage/weights/totalsegmentator /opt/nodestage/weights/nnunet

# pyproject.toml's dependency list alone: editing its other sections (pytest markers, tools)
# leaves the dependency layer below cached, since COPY --from compares content
FROM runtime AS dependency-list
COPY pyproject.toml /tmp/pyproject.toml
# with the celery extra: the same image runs the scale-out workers (deploy/docker-compose.yml)
RUN python3 -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb')); print('\n'.join(p['project']['dependencies'] + p['project']['optional-dependencies']['celery']))" \
      > /tmp/requirements.txt

FROM runtime

# cpu (default) or a CUDA tag of download.pytorch.org (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
# where torch comes from; empty = wherever pip's own configuration finds it (scripts/build-image.sh)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# a pip.conf for the build only (local indexes, a proxy's CA); build arguments do not stay in the image
ARG PIP_CONFIG_FILE

WORKDIR /opt/nodestage/src

# Dependencies first, in their own layer: a code change does not reinstall torch.
# As `make venv`: torch first, alone, then everything with the lock file as constraints.
COPY constraints.txt ./
COPY --from=dependency-list /tmp/requirements.txt ./
RUN python3 -m venv /opt/nodestage/venv \
 && /opt/nodestage/venv/bin/pip install --no-cache-dir -q --upgrade pip \
 && /opt/nodestage/venv/bin/pip install --no-cache-dir -q \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c constraints.txt torch \
 && /opt/nodestage/venv/bin/pip install --no-cache-dir -q -c constraints.txt -r requirements.txt

COPY pyproject.toml README.md ./
COPY dicomnode ./dicomnode
COPY pipeline ./pipeline
# The venv's bin stays off PATH: pynetdicom's bundled storescu/echoscu there would hide dcmtk's.
# Then a smoke test at build time: the stack imports (shared libraries present) and the CLI starts.
RUN /opt/nodestage/venv/bin/pip install --no-cache-dir -q --no-deps . \
 && cd / && rm -rf /opt/nodestage/src \
 && ln -s /opt/nodestage/venv/bin/nodestage /usr/local/bin/nodestage \
 && ln -s /opt/nodestage/venv/bin/totalseg_import_weights /usr/local/bin/totalseg_import_weights \
 && /opt/nodestage/venv/bin/python -c "import torch, pydicom, pynetdicom, highdicom, SimpleITK, nnunetv2, totalsegmentator.python_api, dicomnode.app.node, dicomnode.run.celery_app, pipeline.run" \
 && nodestage --help >/dev/null

# executable in the repository (COPY keeps the mode)
COPY scripts/container-healthcheck.py /usr/local/bin/nodestage-healthcheck
COPY deploy/config.silent.yaml /etc/nodestage/config.yaml

# TotalSegmentator: weights from the read-only volume, its home (config.json, telemetry off) writable
ENV NODESTAGE_CONFIG=/etc/nodestage/config.yaml \
    TOTALSEG_WEIGHTS_PATH=/opt/nodestage/weights/totalsegmentator \
    TOTALSEG_HOME_DIR=/var/lib/nodestage/totalsegmentator \
    HOME=/var/lib/nodestage

VOLUME ["/etc/nodestage", "/var/lib/nodestage", "/opt/nodestage/weights"]
# DICOM (node.port); 9108 is the Prometheus port when metrics.port is set
EXPOSE 11112 9108

USER nodestage
WORKDIR /var/lib/nodestage

# C-ECHO to the node itself, with a calling AE its own (effective) config accepts
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 CMD ["nodestage-healthcheck"]

# scripts/build-image.sh removes earlier builds of this image by this label
LABEL org.opencontainers.image.title=nodestage \
      org.opencontainers.image.description="DICOM node: lymph-node staging on FDG-PET/CT (research use)"

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["nodestage", "serve", "--config", "/etc/nodestage/config.yaml"]
