# Two commands for a fresh machine: `make demo` and `make test`.
# The venv pins torch for this project's own machines; setup.py stays loose for users.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CORE   := $(VENV)/.installed-core
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test ablation setup clean

setup: $(STAMP)

# what the demo needs: torch and the package (no test or open3d extras, to keep `make demo` short)
$(CORE): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $(CORE)

# everything else: pytest, open3d (and the system library it needs)
$(STAMP): $(CORE)
	$(PY) -m pip install -q -e ".[test,vis]"
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libusb-1.0; then \
		echo "installing libusb-1.0-0 (needed by open3d)"; \
		apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; fi
	touch $(STAMP)

demo: $(CORE)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# The ablation grid on the bundled digits (docs/ablation.md); e.g. make ablation ABLATE="--gpus 0,1 --jobs-per-gpu 8"
ABLATE ?= --jobs-per-gpu 16 --set train.cuda_graphs=true
ablation: $(STAMP)
	$(PY) datasets/demo_digits.py --out .cache/demo_digits
	$(PY) tools/ablate.py --grid configs/ablation/grid.yaml --doc docs/ablation.md --plot docs/ablation.png $(ABLATE)

clean:
	rm -rf $(VENV) experiments .pytest_cache
