#!/usr/bin/env bash
# The whole check: lint, types, layering, then the test suite. Fails if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff";          ruff check nonstop tests bench
echo "== mypy (strict on nonstop.core, --check-untyped-defs on every shell)"; mypy nonstop --check-untyped-defs
echo "== import-linter"; lint-imports
echo "== pytest"
set +e
pytest -q -ra "$@"
rc=$?
set -e
if [ $rc = 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi
exit $rc
