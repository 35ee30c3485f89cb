# The two set-up commands of the README: `make demo` and `make test`; `make docs` builds the site into site/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfcam-installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test lint demo bench docs clean browser

# Reinstall only when the package metadata changes (the install is editable). The docs extra is part of the
# test install: the suite builds the site with --strict (tests/test_docs.py).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check tfcam tests benchmarks

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# Headless Chromium (Debian's package) for the viewer's browser tests (tests/test_tensorboard_viewer.py) and
# benchmarks/browser_first_paint.py; they skip, saying so, when it is missing. apt-get needs root.
browser:
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ if [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
		  else sudo -n apt-get install -y chromium; fi; }

demo: $(STAMP)
	$(VENV)/bin/tfcam demo --out runs/demo

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	# Xplique pins tensorflow[and-cuda]<=2.20 (several GB of CUDA wheels, and a downgrade): it is
	# installed without its pins, with the libraries it imports; it runs on the TensorFlow here
	$(PY) -m pip install -q --no-deps xplique einops tf-keras
	$(PY) -m pip install -q tensorflow-probability scikit-learn scikit-image
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
