# SalesPulse: `make run` starts the local stack, `make test` runs the tests.
# Both set up what is missing first (apt packages, .venv, pip), idempotently.
.PHONY: setup run test status bench clean-state

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/salespulse stack up

status: setup
	.venv/bin/salespulse status

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/run_all.py

clean-state:
	.venv/bin/salespulse stack reset
