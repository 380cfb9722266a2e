# GFM4D: `make demo` sets everything up and runs the demo; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Optional: a CPU-only torch index for machines without a GPU, e.g.
#   make demo GFM4D_TORCH_INDEX=https://download.pytorch.org/whl/cpu
GFM4D_TORCH_INDEX ?=
TORCH_ARGS := $(if $(GFM4D_TORCH_INDEX),--index-url $(GFM4D_TORCH_INDEX) --extra-index-url https://pypi.org/simple,)

.PHONY: setup demo test clean

setup: $(VENV)/.gfm4d-installed

$(VENV)/.gfm4d-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_ARGS)
	$(PY) -m pip install --quiet -e ".[server,onnx,test]"
	touch $@

demo: setup
	$(VENV)/bin/gfm4d demo --output demo_output

test: setup
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) demo_output build *.egg-info
