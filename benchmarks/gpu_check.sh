#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py) with the repository's virtual environment when there is one.
# Usage: benchmarks/gpu_check.sh [--out DIR] [--budget-s 420] [--verbose]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
[ -x "$root/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && python="$root/.venv/bin/python"
export PYTHONUNBUFFERED=1
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
