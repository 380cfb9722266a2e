# GFM4D: `make demo` sets everything up and runs the demo; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# QGIS's Python bindings are built for the system interpreter (Debian: python3-qgis).
QGIS_PYTHON ?= /usr/bin/python3
# Optional: a CPU-only torch index for machines without a GPU, e.g.
#   make demo GFM4D_TORCH_INDEX=https://download.pytorch.org/whl/cpu
GFM4D_TORCH_INDEX ?=
TORCH_ARGS := $(if $(GFM4D_TORCH_INDEX),--index-url $(GFM4D_TORCH_INDEX) --extra-index-url https://pypi.org/simple,)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup qgis-setup demo test test-engine test-qgis plugin clean gfm4d-mini gfm4d-mini-inpaint

setup: $(VENV)/.gfm4d-installed

$(VENV)/.gfm4d-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_ARGS)
	$(PY) -m pip install --quiet -e ".[server,onnx,test]"
	touch $@

# QGIS 3.22+ with Processing and pytest for the system interpreter (Debian/Ubuntu packages).
qgis-setup:
	@$(QGIS_PYTHON) -c "import qgis.core, pytest" 2>/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			python3-qgis qgis-providers python3-pytest >/dev/null; }

demo: setup
	$(VENV)/bin/gfm4d demo --output demo_output

test: test-engine test-qgis

test-engine: setup
	$(PY) -m pytest tests --ignore=tests/qgis

test-qgis: setup qgis-setup
	QT_QPA_PLATFORM=offscreen GFM4D_ENGINE_PYTHON=$(abspath $(PY)) $(QGIS_PYTHON) -m pytest tests/qgis -p no:cacheprovider

# Reproduce the built-in model's weights (hours on a CPU; resumable: run it again to continue).
gfm4d-mini: setup
	$(VENV)/bin/gfm4d train recipes/gfm4d-mini/sources.yaml --recipe recipes/gfm4d-mini/recipe.yaml \
		-o engine/models/builtin/gfm4d-mini --run-dir .gfm4d/train/gfm4d-mini

# Its inpainting variant, fine-tuned from it with flood and burn polygons as masks (about 40 minutes on a CPU).
gfm4d-mini-inpaint: setup
	$(VENV)/bin/gfm4d train recipes/gfm4d-mini/sources-events.yaml --recipe recipes/gfm4d-mini/inpaint.yaml \
		-o engine/models/builtin/gfm4d-mini-inpaint --run-dir .gfm4d/train/gfm4d-mini-inpaint

plugin:
	$(QGIS_PYTHON) scripts/build_plugin.py --output-dir dist

clean:
	rm -rf $(VENV) demo_output dist build *.egg-info
