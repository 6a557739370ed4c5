"""The fine-tuning notebook: a registered pretrained backbone, fine-tuned at eps 1, 2, 8."""
from __future__ import annotations

import ast

import pytest

from notebook_runner import execute, printed

pytestmark = pytest.mark.slow


def test_finetune_notebook(tmp_path):
    """Register the package backbone, fine-tune it at eps 1, 2, 8, plot accuracy against eps."""
    from datasite import lifecycle
    from datasite.config import SiteHome

    try:
        nb = execute("finetune.ipynb", {"DPDS_NB_HOME": str(tmp_path), "DPDS_NB_TIMEOUT": "300",
                                         "DPDS_NB_PASSWORD": "alice-notebook-pw"})
        text = printed(nb)
        assert "registered lite0: efficientnet_lite0" in text
        acc = ast.literal_eval(text.split("accuracy by epsilon:")[1].splitlines()[0].strip())
        assert sorted(acc) == [1.0, 2.0, 8.0]
        assert acc[8.0] > 0.6  # a pretrained head beats the balanced majority class at eps 8
        assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 10_000
        assert any(o.get("data", {}).get("image/png") for c in nb.cells
                   for o in c.get("outputs", []))
    finally:
        if (tmp_path / "hospital-a" / "config.json").exists():
            lifecycle.down(SiteHome(tmp_path / "hospital-a"))
