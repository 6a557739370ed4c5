#!/usr/bin/env bash
# Set everything up and run the whole test suite (needs PostgreSQL on 127.0.0.1:5432).
source "$(dirname "$0")/scripts_common.sh"
# Test files run in parallel (pytest-xdist), whole files per process so module fixtures (live
# sites) are built once: min(cores + 1, 4) processes, or $DPDS_TEST_WORKERS (1: one process).
# One more than the cores: the tests wait on servers and job processes, and a third process
# fills those waits (2 cores: 449 s with 2 processes, 422 s with 3; the CPUs 99% busy).
# Files go out longest first (tests/conftest.py orders them by tests/file_seconds.json; xdist's
# own reorder, by number of tests, would leave the one-test notebook files for last).
workers=${DPDS_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min((os.cpu_count() or 1) + 1, 4))')}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
