# Two commands on a fresh machine:
#   make demo   set up .venv and run every bundled demo feed once; alert emails land in demo-run/outbox/
#   make test   set up .venv and run the test suite
# make test-postgres runs the suite again on the PostgreSQL server $SCHOOLWATCH_TEST_DB names.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-postgres install clean

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

# Each test creates, then drops, its own database on this server (.ci/run starts a throwaway one).
SCHOOLWATCH_TEST_DB ?= postgresql+psycopg://postgres@127.0.0.1:5433/postgres
test-postgres: $(STAMP)
	SCHOOLWATCH_TEST_DB='$(SCHOOLWATCH_TEST_DB)' $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-run .pytest_cache
