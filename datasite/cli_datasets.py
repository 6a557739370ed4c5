"""`datasite datasets ...` and what `datasite upload --replace` reports: managing datasets
from the command line (the work is done by :mod:`datasite.publishing`)."""
from __future__ import annotations

from shared.display import escape

from .config import SiteError, open_site


def print_replaced(report: dict) -> None:
    """What a new version changed: the spend that carries over, the models it withdrew."""
    name = escape(report["meta"].name)
    print(f"This is a new version of {name}: record ids are now the new file's row numbers.")
    spent = report["spent"]
    if spent is None:
        print(f"  {name} has no budget yet: set one with `datasite budget`.")
    else:
        print(f"  The ledger's spend carries over (the same patients): eps={spent['epsilon']:.3f}"
              f" of {spent['budget']:g} already spent on {name} by {spent['jobs']} job(s) still "
              "counts against its budget.")
    for m in report["withdrawn"]:
        print(f"  model {escape(m['request'][:8])} ({escape(m['researcher'])}) trained on the old "
              "version: WITHDRAWN, `datasite forget` can no longer update it")
    if report["forgotten_before"]:
        print(f"  {report['forgotten_before']} record(s) had been forgotten from the old version: "
              "make sure the new file does not hold them again.")
    if report["old_path_kept"]:
        print(f"  a job started on the old version meanwhile: it is kept at "
              f"{escape(report['old_path_kept'])}; remove it once that job has finished.")


def cmd_delete(args) -> None:
    from .owner import OwnerSite

    site = OwnerSite(open_site(args.name, args.home))
    if not args.yes and not _confirm(
            f"Delete dataset {escape(args.dataset)} from {escape(args.name)}: its published "
            "mock and metadata and every stored version of the real data (the ledger keeps its "
            "history)? [y/N] "):
        raise SiteError("Not deleted (confirm with y, or pass --yes).")
    report = site.delete_dataset(args.dataset, force=args.force)
    print(f"Deleted dataset {escape(args.dataset)} from {escape(args.name)} "
          f"({report['versions_removed']} stored version(s) removed); the ledger keeps its "
          "history and budget under this name.")
    for m in report["withdrawn"]:
        print(f"  model {escape(m['request'][:8])} ({escape(m['researcher'])}): WITHDRAWN")
    for r in report["busy"]:
        print(f"  request {escape(r['request_id'][:8])} was {escape(r['state'])}: its data is gone")


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False

