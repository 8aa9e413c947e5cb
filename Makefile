# fastvip: `make setup` (venv + everything), `make demo`, `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastvip-installed
DEMO   ?= demo_out

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt tools/install_system_deps.sh
	bash tools/install_system_deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -c constraints.txt -e '.[dali,test,demo,tensorboard]'
	touch $(STAMP)

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash tools/demo.sh $(DEMO)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=25 tests

clean:
	rm -rf $(DEMO) .pytest_cache
