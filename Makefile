# Conveniences over the scripts; scripts/setup.sh makes .venv.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-quick bench-list

bench:        ## all suites, all contenders, 5 rounds: bench/results/latest.{md,json,png}
	$(PYTHON) -m uvpy.bench $(ARGS)

bench-quick:  ## about a minute: bench/results/quick.{md,json,png}
	$(PYTHON) -m uvpy.bench --quick $(ARGS)

bench-list:   ## suites, workloads, contenders
	$(PYTHON) -m uvpy.bench --list
