# The two commands of the README. Each sets up what it needs on a fresh machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv system-packages clean

demo: $(STAMP)
	$(VENV)/bin/nodestage demo

test: $(STAMP) system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

# torch first, alone: pip then takes the local CPU wheel; constraints.txt keeps every
# other package (torchvision above all) from replacing it with a CUDA build.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

system-packages:
	bash scripts/ensure-system-packages.sh

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
