"""The round server's process: ``python -m datasite.round_server SITE_HOME SCHEDULE_ID``.

Started in the background by ``rounds.start_schedule``; it opens the site as its owner and
serves the schedule's rounds (``rounds.serve``). A module of its own so that rounds.py need
not import owner.py (which imports rounds).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import SiteHome
from .owner import OwnerSite
from .rounds import serve


def main(argv: list[str] | None = None) -> int:
    """Serve one schedule until it ends; prints its final state as JSON."""
    home, schedule_id = (argv or sys.argv[1:])[:2]
    site = OwnerSite(SiteHome(Path(home)))
    state = serve(site, schedule_id)
    print(json.dumps({"schedule": schedule_id, "final_state": state}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
