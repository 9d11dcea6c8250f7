# The two quick-start commands: `make demo` and `make test`. Both create .venv when missing and
# (re)install the package when its declared dependencies change; a second run reuses both.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.graphopt-installed

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	# The 20 labelled ImageNet and CIFAR-10 images the tests evaluate on ship inside foolbox; only its data
	# folder is used (found without importing it), so none of its own dependencies are needed.
	$(BIN)/python -m pip install --progress-bar off --no-deps foolbox==3.3.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graphopt apply recipes/lvvit.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
