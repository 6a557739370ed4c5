"""The cross-process calibration cache (shared.privacy.calibration_cache): a sigma calibrated by
one process (the pricing worker, `datasite run`, the job) is read by the next instead of being
calibrated again -- bit for bit the same value, and only after checking it still meets its
target, so a tampered file can cost time, never privacy."""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Callable

import pytest

from shared import targets
from shared.privacy import accounting, calibration_cache, reporting, tuning
from shared.privacy.calibration_cache import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5


@dataclass(frozen=True)
class Kind:
    """One calibration: how the job asks for it, what computes it, and its target check."""

    call: Callable[[], float]
    module: object  # where the calibration function lives (patched to count calls)
    function: str
    meets: Callable[[float], bool]


# Small schedules (q = 1, one or two steps): an epsilon or tuned calibration takes well under a
# second, a mu one a few seconds (its trade-off curve is the slow part).
EPS_SPEC = NS(epsilon=1.0, delta=DELTA, target={})
TUNED_SPEC = NS(epsilon=8.0, delta=DELTA, target={}, tuning_trials=5.0, tuning_shape=1.0)
KINDS = {
    "epsilon": Kind(lambda: targets.noise_multiplier(EPS_SPEC, 1.0, 2), accounting,
                    "calibrate_noise", lambda s: accounting.meets_epsilon(1.0, s, 2, 1.0, DELTA)),
    "mu": Kind(lambda: targets.noise_multiplier(NS(epsilon=0.0, delta=DELTA, target={"mu": 2.0}),
                                                1.0, 1),
               reporting, "calibrate_noise_for",
               lambda s: reporting.meets_risk_target(1.0, s, 1, mu=2.0)),
    "tuned": Kind(lambda: targets.tuned_noise_multiplier(TUNED_SPEC, 1.0, 2, 20.0), tuning,
                  "calibrate_tuned_noise",
                  lambda s: tuning.tuned_meets(1.0, s, 2, 20.0, 5.0, 1.0, DELTA, 8.0, {})),
}


def forget_in_process() -> None:
    """Empty the in-process lru caches, as a new process would start."""
    targets._calibrate.cache_clear()
    targets._calibrate_tuned.cache_clear()


@pytest.fixture()
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "calibration.sqlite"
    monkeypatch.setenv(ENV_VAR, str(path))
    forget_in_process()
    yield path
    forget_in_process()  # nothing a test computed (or was fed) outlives it


def count_calibrations(monkeypatch, kind: Kind) -> list:
    """Patch ``kind``'s calibration function to record each call (and still calibrate)."""
    calls, real = [], getattr(kind.module, kind.function)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(kind.module, kind.function, counted)
    return calls


def sql(path: Path, statement: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def rows(path: Path) -> list[tuple]:
    return sql(path, "SELECT name, args, sigma FROM sigmas")


def set_stored(path: Path, value) -> None:
    """Write ``value`` straight into the file, as someone with access to it could."""
    sql(path, "UPDATE sigmas SET sigma = ?", (value,))


def run_python(code: str, env_path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env[ENV_VAR] = env_path
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


# -- exact reuse ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["epsilon", "tuned"])
def test_stored_sigma_is_the_fresh_calibration_exactly(cache_file, monkeypatch, name):
    kind = KINDS[name]
    fresh = getattr(kind.module, kind.function)
    calls = count_calibrations(monkeypatch, kind)
    first = kind.call()
    assert len(calls) == 1 and len(rows(cache_file)) == 1
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600  # owner-only
    forget_in_process()
    again = kind.call()
    assert len(calls) == 1  # read from the file, not calibrated again
    assert again == first == fresh(*calls[0])  # bit for bit (floats are stored exactly)


def test_a_second_process_reads_it_without_calibrating(cache_file, tmp_path):
    sigma = KINDS["epsilon"].call()
    code = ("import sys; from types import SimpleNamespace as NS; from shared import targets; "
            "from shared.privacy import accounting; "
            "accounting.calibrate_noise = lambda *a, **k: sys.exit(3); "
            "print(repr(targets.noise_multiplier(NS(epsilon=1.0, delta=1e-5, target={}), 1.0, 2)))")
    reused = run_python(code, str(cache_file))
    assert reused.returncode == 0, reused.stderr
    assert float(reused.stdout) == sigma
    # The probe is real: with another (empty) file the same process does calibrate (exit 3).
    assert run_python(code, str(tmp_path / "other.sqlite")).returncode == 3


def test_without_the_variable_nothing_is_stored(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    forget_in_process()
    calls = count_calibrations(monkeypatch, KINDS["epsilon"])
    try:
        KINDS["epsilon"].call()
        forget_in_process()
        KINDS["epsilon"].call()
    finally:
        forget_in_process()
    assert len(calls) == 2 and not list(tmp_path.iterdir())


# -- the defence: a stored sigma must still meet its target ----------------------------------------
@pytest.mark.parametrize("name", ["epsilon", "mu", "tuned"])
def test_a_tampered_too_small_sigma_is_rejected(cache_file, monkeypatch, name, caplog):
    kind = KINDS[name]
    sigma = kind.call()
    weak = sigma / 2
    assert kind.meets(sigma) and not kind.meets(weak)  # the attack value breaks the target
    set_stored(cache_file, weak)
    forget_in_process()
    calls = count_calibrations(monkeypatch, kind)
    with caplog.at_level(logging.WARNING, logger=calibration_cache.__name__):
        got = kind.call()
    assert got == sigma and kind.meets(got) and len(calls) == 1  # recalibrated
    assert "fails its target" in caplog.text
    assert [r[2] for r in rows(cache_file)] == [sigma]  # the bad entry is replaced

    # Defence off (the stored value accepted unchecked): the tampered sigma would be used.
    set_stored(cache_file, weak)
    forget_in_process()
    monkeypatch.setattr(calibration_cache, "_usable", lambda value, meets: True)
    assert kind.call() == weak and len(calls) == 1


@pytest.mark.parametrize("bad", ["1.5 please", -1.0, 0.0, math.inf])
def test_stored_values_that_are_no_sigma_are_rejected(cache_file, monkeypatch, bad):
    kind = KINDS["epsilon"]
    sigma = kind.call()
    set_stored(cache_file, bad)
    forget_in_process()
    calls = count_calibrations(monkeypatch, kind)
    assert kind.call() == sigma and len(calls) == 1


# -- a broken file is a cache miss, never an error -----------------------------------------------
@pytest.mark.parametrize("breakage", ["corrupt", "a directory", "no such folder"])
def test_an_unusable_file_is_ignored(tmp_path, monkeypatch, breakage, caplog):
    path = tmp_path / "calibration.sqlite"
    if breakage == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    elif breakage == "a directory":
        path.mkdir()
    else:
        path = tmp_path / "missing" / "calibration.sqlite"
    monkeypatch.setenv(ENV_VAR, str(path))
    forget_in_process()
    try:
        with caplog.at_level(logging.WARNING, logger=calibration_cache.__name__):
            got = KINDS["epsilon"].call()
    finally:
        forget_in_process()
    assert got == accounting.calibrate_noise(1.0, 2, 1.0, DELTA)
    assert "calibration cache" in caplog.text


# -- keys: exact arguments and versions ------------------------------------------------------------
def test_other_versions_and_other_arguments_miss(cache_file, monkeypatch):
    kind = KINDS["epsilon"]
    calls = count_calibrations(monkeypatch, kind)
    kind.call()
    forget_in_process()
    kind.call()
    assert len(calls) == 1

    monkeypatch.setattr(calibration_cache, "CALIBRATION_VERSION", "bumped")
    forget_in_process()
    kind.call()
    assert len(calls) == 2

    monkeypatch.setattr(calibration_cache, "_library_versions", lambda: "dp-accounting=0.0")
    forget_in_process()
    kind.call()
    assert len(calls) == 3

    # Arguments are compared exactly: an epsilon one ulp away is another calibration.
    targets.noise_multiplier(NS(epsilon=math.nextafter(1.0, 2.0), delta=DELTA, target={}), 1.0, 2)
    assert len(calls) == 4


# -- wiring: the datasite and the test suite share one file between their processes ----------------
def test_a_site_gives_its_processes_a_cache_in_its_home(tmp_path, monkeypatch):
    from datasite.config import SiteHome, init_site

    monkeypatch.delenv(ENV_VAR, raising=False)  # restored afterwards
    home = init_site("calib-site", home=tmp_path / "site")
    SiteHome(home.root).load()  # what every datasite process does first
    assert os.environ[ENV_VAR] == str(home.calibration_cache.absolute())
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{ENV_VAR}'])"],
                           env=dict(os.environ), capture_output=True, text=True)
    assert child.stdout.strip() == str(home.calibration_cache.absolute())  # as execution.py
    forget_in_process()
    try:
        KINDS["epsilon"].call()
    finally:
        forget_in_process()
    assert stat.S_IMODE(home.calibration_cache.stat().st_mode) == 0o600


def test_the_suite_and_its_pricing_worker_share_one_cache(calibration_cache_file, monkeypatch):
    from datasite import pricing_worker
    from researcher import jobs
    from shared.data import DatasetMeta
    from shared.privacy.accounting import event_to_json
    from shared.privacy.pricing import planned_event

    assert os.environ[ENV_VAR] == str(calibration_cache_file)  # conftest's session-wide file
    meta = DatasetMeta(name="bc", kind="table", n_records=569, label="diagnosis", labels=[0, 1])
    spec = jobs.DPSGD("bc", "diagnosis", epsilon=1.2345, delta=DELTA, epochs=1, batch_size=64,
                      metrics_epsilon=0.0).spec.to_dict()
    try:
        event_json, _ = pricing_worker.price_bounded(spec, meta.to_json(), 120, 2048)
    finally:
        pricing_worker.shutdown()
    # The worker's forked child stored the sigma; this process now reads it, calibrating nothing.
    monkeypatch.setattr(accounting, "calibrate_noise",
                        lambda *a, **k: pytest.fail("calibrated again"))
    forget_in_process()
    try:
        assert event_to_json(planned_event(spec, meta)) == event_json
    finally:
        forget_in_process()
