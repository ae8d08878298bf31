# SalesPulse: `make run` starts the local stack, `make test` runs the tests.
# Both set up what is missing first (apt packages, .venv, pip), idempotently.
.PHONY: setup run test test-slow status bench chaos cycles soak clean-state requirements

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/salespulse stack up

status: setup
	.venv/bin/salespulse status

# the fast tier: every test but those marked slow (whole stacks, soak-style, fault
# campaigns, compose runtime, Spark clusters, real daemons; docs/CONTRIBUTING.md "Tests")
test: setup
	.venv/bin/python -m pytest -m "not slow" --durations=25 $(PYTEST_ARGS)

# the slow tier: the tests marked slow, each with its reason, and the property tests
# again with the thorough Hypothesis profile (.ci/run runs both tiers)
test-slow: setup
	.venv/bin/python -m pytest -m "slow or property" --hypothesis-profile=thorough --durations=25 $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/run_all.py

# hostile-stream campaign (issue 8): 10,000 valid + 10,000 hostile messages, 10 consumer
# SIGKILLs, 2 PostgreSQL restarts; CHAOS_ARGS="--seed 2 ..." to vary (see docs/chaos.md)
chaos: setup
	.venv/bin/python bench/chaos.py $(CHAOS_ARGS)

# 20 stop/start cycles of the whole local stack (every 5th a SIGKILL): reports
# current again after each start (issue 9); CYCLES_ARGS="--cycles 5" for fewer
cycles: setup
	.venv/bin/python bench/stack_cycles.py $(CYCLES_ARGS)

# the local stack left running (issue 19): M minutes with one more producer at R events/s,
# retention windows scaled down; a table each minute and one JSON line (docs/operations.md)
SOAK_ARGS ?= --minutes 60 --rate 200
soak: setup
	.venv/bin/python bench/soak.py $(SOAK_ARGS)

clean-state:
	.venv/bin/salespulse stack reset

# the app image's package list (docker/requirements-runtime.txt), regenerated from
# requirements.in and the lock requirements.txt; tests/test_requirements.py checks it
requirements:
	python3 scripts/runtime_requirements.py
