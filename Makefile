# Two commands on a fresh machine:
#   make demo   set up .venv and run every bundled demo feed once; alert emails land in demo-run/outbox/
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo-run && mkdir -p demo-run
	cd demo-run && ../$(BIN)/schoolwatch run --once
	@echo "Alert emails (.eml): $(CURDIR)/demo-run/outbox/"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-run .pytest_cache
