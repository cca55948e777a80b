# The two commands: `make up` runs the lab, `make test` runs every check.
.PHONY: up test setup bench down
setup:
	bash scripts/setup.sh
up: setup
	.venv/bin/nonstop up examples/lab.yaml
test:
	bash scripts/test.sh
