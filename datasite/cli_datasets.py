"""`datasite datasets ...`, `datasite forget` and what `datasite upload --replace` reports:
managing datasets and their records from the command line (the work is done by
:mod:`datasite.publishing` and :mod:`datasite.forget`)."""
from __future__ import annotations

import json

from shared.display import escape

from .config import SiteError, open_site


def print_mock(meta) -> None:
    """A DP mock's charge (the schema mock costs nothing: nothing to say)."""
    m = meta.mock
    if m.get("kind") == "dp":
        print(f"  DP mock: eps={m['epsilon']:.3f} at delta={m['delta']:g} charged to "
              f"{escape(meta.name)}'s budget (ledger entry {escape(m['ledger_entry'])}).")


def print_replaced(report: dict) -> None:
    """What a new version changed: the spend that carries over, the models it withdrew."""
    name = escape(report["meta"].name)
    ids = ("; patient ids are its id column's" if report.get("patient_ids") else "")
    print(f"This is a new version of {name}: record ids are now the new file's row "
          f"numbers{ids}.")
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


def cmd_forget(args) -> None:
    """`datasite forget`: the record named by its patient id (``--record`` on a dataset with an
    id column), else by its row number; what happened to the models trained on it."""
    from .owner import OwnerSite

    site = OwnerSite(open_site(args.name, args.home))
    report = site.forget(args.dataset, args.record, data_only=args.data_only, row=args.row)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    who = (f"Patient {escape(repr(report['patient_id']))} (record {report['record']})"
           if report.get("patient_id") is not None else f"Record {report['record']}")
    print(f"{who} removed from {escape(report['dataset'])} for good.")
    for m in report["models"]:
        c = m["certificate"]
        if m["status"] == "withdrawn":
            print(f"  model {escape(m['request'][:8])} ({escape(m['researcher'])}): WITHDRAWN -- "
                  f"{escape(m['reason'], 1000)}")
        else:
            r = m["released"]
            own = ("retrained with fresh noise (residual budget was used up)" if c["retrained"]
                   else f"certified Newton update, residual {c['residual_used']:.3g} of "
                        f"{c['budget']:.3g} used (eps={c['eps']:g}, delta={c['delta']:g})")
            print(f"  model {escape(m['request'][:8])} ({escape(m['researcher'])}): fresh DP "
                  f"release v{m['version']}"
                  f" sent (eps={r['training_epsilon']:.3g}, delta={r['delta']:g}, "
                  f"{r['n_train']} records); owner's copy: {own}")
    if not report["models"]:
        print("  no removal-enabled model was trained on this record")
    for d in report["dp_models"]:
        print(f"  DP model {escape(d['request'][:8])} ({escape(d['researcher'])}), not updated: "
              f"{escape(d['guarantee'], 1000)}")


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

