# The two commands of the README. Each sets up what it needs on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYNETDICOM_APPS := echoscp echoscu findscu getscu movescu qrscp storescp storescu

.PHONY: demo test check venv system-packages viewer-packages container-packages image clean

demo: $(STAMP)
	$(VENV)/bin/nodestage demo

test: $(STAMP) system-packages viewer-packages container-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# the fast tier: tests/unit needs no server, no container and no real data (well under a minute)
check: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

venv: $(STAMP)

# torch first, alone: pip then takes the local CPU wheel; constraints.txt keeps every
# other package (torchvision above all) from replacing it with a CUDA build.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,celery]'
	# pynetdicom installs its own storescu, echoscu, ... apps: with the venv first on PATH they would
	# hide dcmtk's tools of the same names, which the README and the tests mean.
	cd $(VENV)/bin && rm -f $(PYNETDICOM_APPS)
	touch $(STAMP)

system-packages:
	bash scripts/ensure-system-packages.sh

# OHIF v3 (npm pack, cached outside the repo), chromium, chromedriver, orthanc-dicomweb, tesseract:
# the viewer tests and `nodestage demo --viewer` (README "Viewing the results in OHIF")
viewer-packages: system-packages
	bash scripts/ensure-viewer.sh

# podman, buildah, mmdebstrap, runc: the container image and its test (README "Container")
container-packages:
	bash scripts/ensure-container-packages.sh

# the Dockerfile's image, localhost/nodestage:latest, with the same pins (constraints.txt) as the venv
image: container-packages
	bash scripts/build-image.sh

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
