# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.liverseg-installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# Torch first (CPU or CUDA build picked for this machine by scripts/install_torch.sh), then the
# package; its torch requirement is a range that the chosen build satisfies, so pip keeps it.
$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install --quiet -e ".[test,bench,onnx,bundle]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/liverseg demo

# lint-imports first: the layering contracts in pyproject.toml ([tool.importlinter]) fail in a second.
test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest

test-fast: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) demo_output .pytest_cache
