#!/usr/bin/env bash
# CI step: --executor slurm against a real one-machine SLURM cluster (tests/test_slurm.py, marked slurm).
# Installs Debian's SLURM, munge and MariaDB (best effort: where they cannot be installed, the tests skip and say
# why) and submitit, then runs the cluster tests; each test module starts its own cluster (munged, MariaDB,
# slurmdbd, slurmctld, slurmd on localhost, configured in a temporary folder) and stops it afterwards.
# Run from the virtual environment the project is installed in (as .ci/run leaves it).
set -euo pipefail
cd "$(dirname "$0")/.."

packages="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v mariadbd >/dev/null 2>&1; then
    # Debian's maintainer scripts would start the daemons where they can: the tests start their own.
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages) >/dev/null 2>&1 ||
      echo "ci_slurm: could not install $packages; the SLURM tests will skip"
  fi
else
  echo "ci_slurm: not root or no apt-get: the SLURM tests run only if $packages are installed"
fi
python -c "import submitit" 2>/dev/null || pip install -q submitit ||
  echo "ci_slurm: could not install submitit; the SLURM tests will skip"

echo "ci_slurm: python -m pytest -q -m slurm tests/test_slurm.py"
python -m pytest -q -rs -m slurm tests/test_slurm.py
