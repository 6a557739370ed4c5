"""Managing datasets and researchers (issue 13): fast file checks before any login, deleting and
replacing datasets, all-or-nothing `users add`.

The first tests need no PySyft server: the site's low side (its ``client``) is made to fail if
used at all, so they show that each refusal comes before the first login. The tests marked slow
run one real datasite for the module.
"""
from __future__ import annotations

import time

import pandas as pd
import pytest

from conftest import RESEARCHER, NoLogin, free_port, make_site
from datasite import cli
from datasite import users as users_module
from datasite.config import SiteError, init_site
from datasite.demo_data import breast_cancer_schema, write_breast_cancer_csv
from datasite.ingest_checks import IngestError
from datasite.owner import OwnerSite


@pytest.fixture()
def offline(tmp_path, no_login):
    """An initialised site that is not running; logging into it raises NoLogin."""
    home = init_site("offline", home=tmp_path / "offline", port=free_port())
    csv = write_breast_cancer_csv(tmp_path / "bc.csv")
    return OwnerSite(home), csv, tmp_path / "bc.schema.yaml"


# -- fast failures: the files are checked before the site is logged into ------------------------
@pytest.mark.parametrize("content, name, says", [
    (None, "missing.csv", "does not exist"),
    (b"a,b\n1,2\n", "data.parquet", "not a Parquet file"),
    (b"PK\x03\x04rest", "data.csv", "not text"),
    (b"a,b\n1,2\n", "data.csv.gz", "not gzip-compressed"),
    (b"a,b\n1,2\n", "data.json", "Unsupported table file"),
])
def test_upload_checks_the_file_before_logging_in(offline, tmp_path, content, name, says):
    site, _, schema = offline
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    t0 = time.perf_counter()
    with pytest.raises(IngestError, match=says):
        site.upload("bc", table=str(path), schema=schema)
    assert time.perf_counter() - t0 < 1.0


def test_upload_checks_npz_images_and_schema_before_logging_in(offline, tmp_path):
    site, csv, schema = offline
    (tmp_path / "fake.npz").write_bytes(b"not a zip archive")
    with pytest.raises(IngestError, match="not an .npz file"):
        site.upload("x", npz=str(tmp_path / "fake.npz"), schema=schema)
    with pytest.raises(IngestError, match="does not exist or is not a folder"):
        site.upload("x", images=str(tmp_path / "no-dir"), labels=str(csv), schema=schema)
    with pytest.raises(SiteError, match="does not exist"):
        site.upload("x", table=str(csv), schema=tmp_path / "missing.schema.yaml")
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(SiteError, match="not valid YAML"):
        site.upload("x", table=str(csv), schema=tmp_path / "bad.yaml")


def test_cli_upload_checks_the_file_before_opening_the_site(tmp_path, monkeypatch, capsys):
    def opened(args):
        raise NoLogin("the site was opened before the file was checked")

    monkeypatch.setattr(cli, "_site", opened)
    t0 = time.perf_counter()
    rc = cli.main(["upload", "no-such-site", "bc", "--table", str(tmp_path / "missing.csv"),
                   "--schema", str(tmp_path / "bc.schema.yaml")])
    assert rc == 2 and time.perf_counter() - t0 < 1.0
    assert "missing.csv" in capsys.readouterr().err


def test_a_valid_upload_does_reach_the_login(offline):
    """The checks above pass a good upload through: the first slow step is the login."""
    site, csv, schema = offline
    with pytest.raises(NoLogin):
        site.upload("bc", table=str(csv), schema=schema)


# -- replacing and deleting: refusals that come before anything is touched -----------------------
def _registered_dataset(site, csv, name="bc") -> str:
    """A dataset row as an upload leaves it (without the low side)."""
    from datasite.schema import prepare
    from datasite.storage import write_private

    payload, meta, _, _ = prepare(name, breast_cancer_schema(), table=str(csv))
    path = write_private(site.home.private, meta, payload)
    site.state.add_dataset(name, meta.kind, meta.to_json(), str(path))
    site.ledger.set_budget(name, 10.0, 1e-5)
    return str(path)


def test_replace_needs_an_existing_dataset(offline):
    site, csv, schema = offline
    with pytest.raises(SiteError, match="to replace; upload it without --replace"):
        site.upload("bc", table=str(csv), schema=schema, replace=True)


def test_replace_and_delete_refused_while_a_request_on_it_is_unfinished(offline):
    site, csv, schema = offline
    path = _registered_dataset(site, csv)
    site.state.set_state("r" * 32, "running", dataset="bc", researcher="a@b.org")
    with pytest.raises(SiteError, match=r"request rrrrrrrr \(running\) on it is not finished"):
        site.upload("bc", table=str(csv), schema=schema, replace=True)
    with pytest.raises(SiteError, match="Not deleting 'bc'.*--force"):
        site.delete_dataset("bc")
    site.state.set_state("r" * 32, "ran")  # waiting for release: its rows map to this version
    with pytest.raises(SiteError, match=r"\(ran\)"):
        site.delete_dataset("bc")
    assert site.state.dataset("bc")["path"] == path


def test_replace_refused_where_the_ledger_charges_single_records(offline):
    """Per-record charges name record ids; a new version's ids would name other patients."""
    from sqlalchemy import insert

    from datasite.ledger_tables import charges, entries
    from datasite.state import now

    site, csv, schema = offline
    _registered_dataset(site, csv)
    with site.ledger.engine.begin() as c:
        c.execute(insert(entries).values(request_id="al", dataset="bc", researcher="a@b.org",
                                         state="released", event_json="{}", epsilon=1.0,
                                         created_at=now(), updated_at=now()))
        c.execute(insert(charges).values(request_id="al", part=0, kind="ids", event_json="{}",
                                         record_ids="[1, 2]"))
    with pytest.raises(SiteError, match="charges single records"):
        site.upload("bc", table=str(csv), schema=schema, replace=True)


def test_replace_refused_when_the_kept_budget_delta_is_too_large(offline, tmp_path):
    site, csv, _ = offline
    _registered_dataset(site, csv)
    site.ledger.set_budget("bc", 10.0, 5e-3)  # fine for 569 records, not for 300
    small = tmp_path / "small.csv"
    pd.read_csv(csv).iloc[:300].to_csv(small, index=False)
    with pytest.raises(SiteError, match="the ledger's budget for bc"):
        site.upload("bc", table=str(small), schema=breast_cancer_schema(records=300),
                    replace=True)


def test_the_new_version_goes_beside_the_old_one(offline):
    site, csv, _ = offline
    from datasite.schema import prepare
    from datasite.storage import record_ids

    old = _registered_dataset(site, csv)
    payload, meta, _, _ = prepare("bc", breast_cancer_schema(), table=str(csv))
    first = site._write_version(meta, payload)
    second = site._write_version(meta, payload)
    assert (first.name, second.name) == ("bc.v2", "bc.v3")
    assert (site.home.private / "bc").is_dir() and str(site.home.private / "bc") == old
    assert list(record_ids(second)) == list(range(meta.n_records))
    assert not [p for p in site.home.private.iterdir() if p.name.startswith(".")]


# -- users add: every precondition before the account exists -------------------------------------
class FakeUsers:
    def __init__(self):
        self.created, self.deleted = [], []

    def get_all(self):
        return [type("U", (), {"email": e, "id": e})() for e in self.created
                if e not in self.deleted]

    def create(self, email, **_):
        self.created.append(email)
        return type("V", (), {"id": email})()

    def delete(self, uid):
        self.deleted.append(uid)


@pytest.fixture()
def fake_server(offline, monkeypatch):
    site, csv, _ = offline
    users = FakeUsers()
    monkeypatch.setattr(OwnerSite, "client", property(lambda self: type("C", (), {
        "users": users})()))
    monkeypatch.setattr(users_module, "verify_key_of", lambda url, email, password: "k" * 64)
    return site, csv, users


@pytest.mark.parametrize("dataset, eps, says", [
    ("nope", 1.0, "No dataset 'nope'"),
    ("bc", 1.0, "has no budget of its own"),
    ("bc", -1.0, "above 0"),
    ("bc", None, "both --dataset and --budget-eps"),
])
def test_users_add_checks_before_creating_the_account(fake_server, dataset, eps, says):
    site, csv, users = fake_server
    _registered_dataset(site, csv)
    if says == "has no budget of its own":
        site.state.add_dataset("bc2", "table", site.state.dataset("bc")["meta_json"], "/x")
        dataset = "bc2"
    with pytest.raises(SiteError, match=says):
        site.add_user("bob@uni.edu", "bob-password-1", dataset=dataset, budget_epsilon=eps)
    assert users.created == [] and site.state.researcher_keys() == {}


def test_users_add_undoes_the_account_when_a_later_step_fails(fake_server, monkeypatch):
    site, csv, users = fake_server
    _registered_dataset(site, csv)

    def lost(researchers=None):
        raise ConnectionError("server went away")

    monkeypatch.setattr(site, "publish_budgets", lost)
    with pytest.raises(ConnectionError):
        site.add_user("bob@uni.edu", "bob-password-1", dataset="bc", budget_epsilon=2.0)
    assert users.deleted == ["bob@uni.edu"] and site.state.researcher_keys() == {}
    monkeypatch.setattr(site, "publish_budgets", lambda researchers=None: None)
    site.add_user("bob@uni.edu", "bob-password-1", dataset="bc", budget_epsilon=2.0)  # a retry
    assert "bob@uni.edu" in site.state.researcher_keys()
    assert site.ledger.budget("bc", "bob@uni.edu")["epsilon"] == 2.0


def test_cli_users_add_refuses_before_asking_for_a_password(offline, monkeypatch, capsys):
    site, csv, _ = offline
    _registered_dataset(site, csv)
    site.state.add_dataset("nobudget", "table", site.state.dataset("bc")["meta_json"], "/x")
    def no_prompt(*_):
        raise NoLogin("the password was asked for before the options were checked")

    monkeypatch.setattr(cli.getpass, "getpass", no_prompt)
    rc = cli.main(["users", "add", "offline", "bob@uni.edu", "--dataset", "nobudget",
                   "--budget-eps", "1", "--home", str(site.home.root)])
    assert rc == 2 and "has no budget of its own" in capsys.readouterr().err


# -- live: one real datasite for the rest of the module ------------------------------------------
REMOVABLE = dict(label="diagnosis", lam=1e-3, perturbation=10.0, removal_epsilon=1.0,
                 removal_delta=1e-9)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from datasite.demo_data import write_schema

    d = tmp_path_factory.mktemp("manage-data")
    csv = write_breast_cancer_csv(d / "bc.csv")
    small = d / "small.csv"
    pd.read_csv(csv).iloc[:200].to_csv(small, index=False)
    write_schema(d / "small.schema.yaml", breast_cancer_schema(records=200))
    site = make_site(tmp_path_factory.mktemp("manage"), "hosp-manage")
    try:
        site.upload("bc", table=str(csv), schema=d / "bc.schema.yaml", budget_epsilon=40.0,
                    delta=1e-5)
        site.add_user(*RESEARCHER, name="Alice")
        yield site, d
    finally:
        site.down()


def _audit_actions(site) -> list[str]:
    from sqlalchemy import select

    from datasite.audit_log import audit

    with site.ledger.engine.connect() as c:
        return [r[0] for r in c.execute(select(audit.c.action).order_by(audit.c.seq))]


def _published(site, name) -> list:
    return [d for d in site.client.datasets.get_all() if d.name == name]


@pytest.mark.slow
def test_replace_a_dataset_on_a_live_site(live, monkeypatch, capsys):
    import researcher
    from datasite.storage import record_ids

    site, d = live
    client = researcher.connect(site.url, *RESEARCHER)
    model = client.submit(researcher.jobs.RemovableLogReg("bc", delta=1e-6, **REMOVABLE))
    site.run(model.id, progress=False)
    site.release(model.id)
    spent, old = site.ledger.spent("bc"), site.state.dataset("bc")
    small, schema = str(d / "small.csv"), d / "small.schema.yaml"

    # new data that fails its checks: nothing changes
    with pytest.raises(SiteError, match="declares records: 569"):
        site.upload("bc", table=small, schema=d / "bc.schema.yaml", replace=True)
    # a failure while switching over: the old version is published again
    publish = OwnerSite._publish

    def failing(self, meta, mock):
        if meta.n_records == 200:
            raise SiteError("publishing failed (test)")
        return publish(self, meta, mock)

    monkeypatch.setattr(OwnerSite, "_publish", failing)
    with pytest.raises(SiteError, match="publishing failed"):
        site.upload("bc", table=small, schema=schema, replace=True)
    monkeypatch.undo()
    assert site.state.dataset("bc") == old
    assert [x.summary for x in _published(site, "bc")] == ["table, 569 records"]
    assert sorted(p.name for p in site.home.private.iterdir()) == ["bc"]
    assert site.state.models_for("bc")[0]["status"] == "active"

    report = site.replace_dataset("bc", table=small, schema=schema)
    assert report["meta"].n_records == 200 and report["path"].endswith("bc.v2")
    assert [w["request"] for w in report["withdrawn"]] == [model.id]
    (m,) = site.state.models_for("bc")
    assert m["status"] == "withdrawn" and "replaced" in m["reason"]
    assert site.ledger.spent("bc")["epsilon"] == pytest.approx(spent["epsilon"])  # carried over
    assert report["spent"]["epsilon"] == pytest.approx(spent["epsilon"])
    assert report["old_path_kept"] is None and not (site.home.private / "bc").exists()
    assert list(record_ids(report["path"])) == list(range(200))
    assert [x.summary for x in _published(site, "bc")] == ["table, 200 records"]
    assert "dataset_replaced" in _audit_actions(site) and site.ledger.verify()[0]

    # the new version is used by the next job, and its spend adds to the carried one
    job = researcher.jobs.Statistics("bc").count(epsilon=0.5)
    req = client.submit(job)
    site.review()
    site.run(req.id, progress=False)
    site.release(req.id)
    assert site.ledger.spent("bc")["epsilon"] > spent["epsilon"]

    # the command line says what carried over
    rc = cli.main(["upload", site.name, "bc", "--table", small, "--schema", str(schema),
                   "--replace", "--home", str(site.home.root)])
    out = capsys.readouterr().out
    assert rc == 0 and "spend carries over" in out and "bc.v3" in site.state.dataset("bc")["path"]


@pytest.mark.slow
def test_delete_a_dataset_on_a_live_site(live, monkeypatch, capsys):
    site, d = live
    site.upload("gone", table=str(d / "small.csv"), schema=d / "small.schema.yaml",
                budget_epsilon=5.0, delta=1e-5)
    home = ["--home", str(site.home.root)]
    monkeypatch.setattr("builtins.input", lambda q: "n")
    assert cli.main(["datasets", "delete", site.name, "gone", *home]) == 2
    assert "Not deleted" in capsys.readouterr().err and site.state.dataset("gone")

    site.state.set_state("g" * 32, "running", dataset="gone", researcher=RESEARCHER[0])
    assert cli.main(["datasets", "delete", site.name, "gone", "--yes", *home]) == 2
    assert "--force" in capsys.readouterr().err and _published(site, "gone")

    assert cli.main(["datasets", "delete", site.name, "gone", "--yes", "--force", *home]) == 0
    assert "Deleted dataset gone" in capsys.readouterr().out
    assert site.state.dataset("gone") is None and not _published(site, "gone")
    assert not [p for p in site.home.private.iterdir() if p.name.startswith("gone")]
    assert site.ledger.budget("gone") is not None  # the ledger keeps its history and budget
    assert "dataset_deleted" in _audit_actions(site) and site.ledger.verify()[0]
    assert "gone" not in site.budgets_for(RESEARCHER[0])
    with pytest.raises(SiteError, match="No dataset 'gone'"):
        site.delete_dataset("gone")


@pytest.mark.slow
def test_users_add_is_all_or_nothing_on_a_live_site(live, tmp_path, monkeypatch, capsys):
    site, d = live
    site.upload("nobudget", table=str(d / "small.csv"), schema=d / "small.schema.yaml")
    pw = tmp_path / "pw"
    pw.write_text("bob-password-1\n")
    args = ["users", "add", site.name, "bob@uni.edu", "--dataset", "nobudget", "--budget-eps",
            "1", "--password-file", str(pw), "--home", str(site.home.root)]

    def accounts():
        return {str(u.email) for u in site.client.users.get_all()}

    assert cli.main(args) == 2 and "has no budget of its own" in capsys.readouterr().err
    assert "bob@uni.edu" not in accounts() and "bob@uni.edu" not in site.state.researcher_keys()
    site.set_budget("nobudget", 5.0, 1e-5)
    assert cli.main(args) == 0  # the same command, once the dataset has a budget
    assert "bob@uni.edu" in accounts()
    assert site.ledger.budget("nobudget", "bob@uni.edu")["epsilon"] == 1.0

    def lost(self, researchers=None):
        raise ConnectionError("notification service down (test)")

    monkeypatch.setattr(OwnerSite, "publish_budgets", lost)
    with pytest.raises(ConnectionError):
        site.add_user("carol@uni.edu", "carol-password-1", dataset="nobudget", budget_epsilon=1.0)
    assert "carol@uni.edu" not in accounts() and "carol@uni.edu" not in site.state.researcher_keys()
    monkeypatch.undo()
    site.add_user("carol@uni.edu", "carol-password-1", dataset="nobudget", budget_epsilon=1.0)
    assert "carol@uni.edu" in accounts()


def test_a_taken_name_is_refused_before_the_files_are_checked(offline):
    """The owner's own table answers this without a login (test_workflow relies on it)."""
    site, csv, _ = offline
    _registered_dataset(site, csv)
    with pytest.raises(SiteError, match="already exists.*--replace"):
        site.upload("bc", table="x.csv", label="diagnosis")
