"""The federation notebook: two datasites, DP statistics, federated DP training, ledgers."""
from __future__ import annotations

import pytest

from notebook_runner import execute, printed

pytestmark = pytest.mark.slow


def test_federation_notebook(tmp_path):
    """Two datasites: DP statistics, then federated DP training, then both owners' ledgers."""
    from datasite import lifecycle
    from datasite.config import SiteHome

    try:
        # 2 rounds (the notebook's default is 3): still multi-round, the second round starting
        # from the averaged model; each round costs a job process per site
        nb = execute("federation.ipynb", {"DPDS_NB_HOME": str(tmp_path),
                                           "DPDS_NB_TIMEOUT": "300", "DPDS_NB_ROUNDS": "2",
                                           "DPDS_NB_PASSWORD": "alice-notebook-pw"})
        text = printed(nb)
        assert "federated training: 2 round(s), sites hospital-a, hospital-b" in text
        acc = float(text.split("union test accuracy:")[1].split()[0])
        assert 0.6 < acc <= 1.0
        assert "for all 2 rounds" in text
        assert "=== hospital-a" in text and "=== hospital-b" in text
    finally:
        for name in ("hospital-a", "hospital-b"):
            if (tmp_path / name / "config.json").exists():
                lifecycle.down(SiteHome(tmp_path / name))
