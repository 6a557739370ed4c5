"""A table's patient-id column (issue 13, "real tables"): ``upload --id-column`` splits it off as
the file is read, keeps its ids privately beside the records, and ``forget --record ID`` finds
the record by them.

The first tests need no PySyft server: the site's low side (its ``client``) fails if used at all,
so they also show that every refusal comes before the first login. The tests marked slow run one
real datasite for the module: a researcher reads everything published and finds no id (and finds
the column when the defence is off), and forgetting a patient by id updates a removal-enabled
model.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import researcher
from conftest import RESEARCHER, NoLogin, free_port, make_site
from datasite import cli
from datasite.config import SiteError, init_site
from datasite.demo_data import breast_cancer_frame, breast_cancer_schema, write_schema
from datasite.ingest_checks import IngestError
from datasite.owner import OwnerSite

slow = pytest.mark.slow
ID = "patient_id"
N = 569  # records of the breast-cancer table


def patient_ids(n: int, seed: int = 0) -> list[str]:
    """Int-like ids with two leading zeros (a CSV reader makes numbers of them and drops the
    zeros unless told otherwise), 15 digits after them so that no published number holds one by
    chance (about 1e6 digits published x 569 ids / 1e15 ~ 1e-6)."""
    rng = np.random.default_rng(seed)
    nums = sorted({int(v) for v in rng.integers(10**14, 10**15, size=2 * n)})[:n]
    out = [f"00{v}" for v in nums]
    rng.shuffle(out)
    return out


def write_table(path, ids: list, frame: pd.DataFrame | None = None):
    df = (breast_cancer_frame() if frame is None else frame).copy()
    df.insert(0, ID, ids)
    df.to_csv(path, index=False)
    return path


def leaked(text: str, ids) -> list[str]:
    """The ids whose text, or the number a reader would make of it, appears in ``text``."""
    return [i for i in ids if i in text or i.lstrip("0") in text]


def id_feature_schema(records: int = N) -> dict:
    """The schema an owner who forgot --id-column would review: the id as an int feature."""
    s = breast_cancer_schema(records)
    s["columns"] = {ID: {"type": "int", "bounds": [0, 10**15]}, **s["columns"]}
    return s


# -- no server: reading, checks before the login, the draft, forget's resolution ---------------
@pytest.fixture()
def offline(tmp_path, no_login):
    """An initialised site that is not running; logging into it raises NoLogin."""
    home = init_site("offline", home=tmp_path / "offline", port=free_port())
    ids = patient_ids(N)
    csv = write_table(tmp_path / "ids.csv", ids)
    schema = write_schema(tmp_path / "bc.schema.yaml", breast_cancer_schema())
    return OwnerSite(home), csv, schema, ids


def test_ids_are_read_as_text_and_split_off(tmp_path):
    from datasite.ingest import load_table_with_ids

    ids = patient_ids(N)
    ids[3] = f"  {ids[3]} "  # surrounding blanks are not part of the id
    csv = write_table(tmp_path / "ids.csv", ids)
    for raw in (False, True):
        df, meta, got = load_table_with_ids(csv, "diagnosis", ID, raw=raw)
        assert got == [i.strip() for i in ids] and got[0].startswith("00")
        assert ID not in df.columns and ID not in meta.features and len(df) == N
    # without the option the same column is an int feature: the leading zeros are gone
    df, meta, none = load_table_with_ids(csv, "diagnosis", None)
    assert none is None and ID in meta.features and df[ID].iloc[0] == int(ids[0])
    # numbers stored as numbers (Parquet, Excel) are ids without a trailing .0
    frame = breast_cancer_frame()
    frame.insert(0, ID, np.arange(N, dtype=float) + 1000)
    frame.to_parquet(tmp_path / "ids.parquet")
    _, _, got = load_table_with_ids(tmp_path / "ids.parquet", "diagnosis", ID)
    assert got[:2] == ["1000", "1001"]


def test_id_errors_come_before_the_login(offline, tmp_path):
    site, csv, schema, ids = offline
    frame = pd.read_csv(csv, dtype={ID: str})
    cases = []
    cases.append(("no-column", frame.drop(columns=[ID]),
                  rf"no id column '{ID}'; available columns: mean_radius, mean_texture"))
    missing = frame.copy()
    missing.loc[[4, 9], ID] = np.nan
    missing.loc[20, ID] = "   "
    cases.append(("missing", missing, r"3 record\(s\) have no id .*rows 6, 11, 22, the header"))
    dup = frame.copy()
    dup.loc[[5, 7], ID] = dup.loc[1, ID]
    dup.loc[30, ID] = dup.loc[31, ID]
    cases.append(("dupes", dup, rf"2 id\(s\) in column '{ID}' name more than one record "
                                rf"\('{dup.loc[1, ID]}' \(3 times\), "
                                rf"'{dup.loc[31, ID]}' \(2 times\)\)"))
    for name, df, says in cases:
        path = tmp_path / f"{name}.csv"
        df.to_csv(path, index=False)
        with pytest.raises(IngestError, match=says):
            site.upload("bc", table=str(path), schema=schema, id_column=ID)
    declared = write_schema(tmp_path / "declared.yaml", id_feature_schema())
    with pytest.raises(SiteError, match=f"declares the id column '{ID}': delete it"):
        site.upload("bc", table=str(csv), schema=declared, id_column=ID)
    with pytest.raises(IngestError, match="is also the label column"):
        site.upload("bc", table=str(csv), schema=schema, id_column="diagnosis")
    with pytest.raises(SiteError, match="applies to tables only"):
        site.upload("x", npz=str(tmp_path / "x.npz"), schema=schema, id_column=ID)
    with pytest.raises(NoLogin):  # the same upload, right: the first slow step is the login
        site.upload("bc", table=str(csv), schema=schema, id_column=ID)


def test_upload_warnings_and_notes_never_see_the_id_column(tmp_path, capsys):
    """The owner-only upload warnings flag an id left in the table; split off, it is gone."""
    from datasite.schema import prepare_upload

    ids = patient_ids(N)
    csv = write_table(tmp_path / "ids.csv", ids)
    with_ids = prepare_upload("bc", breast_cancer_schema(), table=str(csv), id_column=ID)
    assert with_ids.ids == ids and ID not in with_ids.payload.columns
    assert not [n for n in with_ids.notes if ID in n]
    assert ID not in with_ids.meta.to_json() and ID not in with_ids.mock.columns
    assert not leaked(with_ids.payload.to_csv() + with_ids.mock.to_csv(), ids)
    off = prepare_upload("bc", id_feature_schema(), table=str(csv))  # the defence off
    assert any(ID in n and "looks like an identifier" in n for n in off.notes)
    assert ID in off.meta.to_json() and ID in off.mock.columns
    assert len(leaked(off.payload.to_csv(), ids)) == N  # every job would read them


def test_schema_draft_leaves_the_id_column_out(tmp_path, capsys):
    ids = patient_ids(N)
    csv = write_table(tmp_path / "ids.csv", ids)
    assert cli.main(["schema", "draft", str(csv), "--label", "diagnosis",
                     "--id-column", ID]) == 0
    text = capsys.readouterr().out
    assert ID not in text and "mean_radius" in text and not leaked(text, ids)
    assert cli.main(["schema", "draft", str(csv), "--label", "diagnosis"]) == 0
    assert f"{ID}:" in capsys.readouterr().out  # without the option it is drafted as a column
    assert cli.main(["schema", "draft", str(csv), "--label", "diagnosis",
                     "--id-column", "nope"]) == 2
    assert "no id column 'nope'; available columns: patient_id" in capsys.readouterr().err


def _registered(site, csv, name="bc", id_column=ID) -> str:
    """A dataset row as an upload leaves it (without the low side)."""
    from datasite.schema import prepare_upload
    from datasite.storage import write_private

    up = prepare_upload(name, breast_cancer_schema(), table=str(csv), id_column=id_column)
    path = write_private(site.home.private, up.meta, up.payload, up.ids)
    site.state.add_dataset(name, up.meta.kind, up.meta.to_json(), str(path))
    return str(path)


def test_forget_resolves_patient_ids_and_row_numbers(offline):
    from datasite.storage import patient_record, read_private, record_ids

    site, csv, _, ids = offline
    path = _registered(site, csv)
    real = breast_cancer_frame()
    target = 17
    assert site.state.dataset("bc") and patient_record(path, ids[target]) == target
    # an unknown id: refused, nothing changes, no other id named
    for wrong in (ids[target].lstrip("0"), "P-1", ids[target] + "9"):
        with pytest.raises(SiteError, match="is not in bc \\(or was already forgotten\\)") as e:
            site.forget("bc", wrong, data_only=True)
        assert not leaked(str(e.value).replace(repr(wrong), ""), ids)
    assert len(read_private(path)[0]) == N
    report = site.forget("bc", f" {ids[target]} ", data_only=True)  # as text, blanks stripped
    assert report["record"] == target and report["patient_id"] == ids[target]
    data, _ = read_private(path)
    assert len(data) == N - 1 and target not in record_ids(path).tolist()
    assert not (data.to_numpy() == real.iloc[target].to_numpy()).all(axis=1).any()
    assert patient_record(path, ids[target]) is None
    assert _audit_payloads(site, "forget") == [{"dataset": "bc", "record": target, "models": []}]
    assert not leaked(json.dumps(_audit_payloads(site)), ids)  # the record id, not the patient's
    with pytest.raises(SiteError, match="already forgotten"):
        site.forget("bc", ids[target], data_only=True)
    # --row still names a record by its row number, and its id leaves the map too
    report = site.forget("bc", row=40, data_only=True)
    assert report["record"] == 40 and report["patient_id"] is None
    assert patient_record(path, ids[40]) is None
    with pytest.raises(SiteError, match="already removed"):
        site.forget("bc", row=40, data_only=True)
    with pytest.raises(SiteError, match="one of the two"):
        site.forget("bc", ids[1], row=1, data_only=True)


def _audit_payloads(site, action: str | None = None) -> list[dict]:
    from sqlalchemy import select

    from datasite.audit_log import audit

    q = select(audit.c.payload) if action is None else \
        select(audit.c.payload).where(audit.c.action == action)
    with site.ledger.engine.connect() as c:
        return [json.loads(p) for (p,) in c.execute(q)]


def test_forget_without_an_id_column_takes_row_numbers(offline, tmp_path):
    site, _, _, _ = offline
    plain = tmp_path / "plain.csv"
    breast_cancer_frame().to_csv(plain, index=False)
    _registered(site, plain, "plain", id_column=None)
    with pytest.raises(SiteError, match="uploaded without --id-column: name the record by its row"):
        site.forget("plain", "P-1", data_only=True)
    assert site.forget("plain", "3", data_only=True)["record"] == 3  # the CLI passes text


# -- a real datasite -----------------------------------------------------------------------------
REMOVABLE = dict(label="diagnosis", lam=1e-3, perturbation=10.0, removal_epsilon=1.0,
                 removal_delta=1e-9)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One datasite: ``bc_ids`` uploaded with --id-column (through the CLI), ``bc_plain`` the
    same file uploaded without it (the defence off); a DP-SGD model released on each."""
    import contextlib
    import io

    d = tmp_path_factory.mktemp("ids")
    ids = patient_ids(N)
    csv = write_table(d / "hospital.csv", ids)
    schema = write_schema(d / "bc.schema.yaml", breast_cancer_schema())
    site = make_site(d, "hosp-ids")
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["upload", site.name, "bc_ids", "--table", str(csv), "--schema",
                           str(schema), "--id-column", ID, "--budget-eps", "60", "--delta",
                           "1e-4", "--home", str(site.home.root)])
        assert rc == 0, err.getvalue()
        notes = {"bc_ids": err.getvalue()}
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            site.upload("bc_plain", table=str(csv), schema=id_feature_schema(),
                        budget_epsilon=60.0, delta=1e-4)
        notes["bc_plain"] = err.getvalue()
        site.add_user(*RESEARCHER, name="Alice")
        client = researcher.connect(site.url, *RESEARCHER)
        results = {}
        for name in ("bc_ids", "bc_plain"):
            req = client.submit(researcher.jobs.DPSGD(name, "diagnosis", 2.0, 1e-5))
            site.run(req.id, progress=False)
            site.release(req.id)
            results[name] = req.wait(timeout=120, progress=False)
        yield {"site": site, "client": client, "ids": ids, "csv": csv, "notes": notes,
               "results": results, "dir": d}
    finally:
        site.down()


def published(client, dataset: str, result) -> str:
    """Everything a researcher can read about ``dataset``: the catalogue entry, its metadata and
    mock, the raw PySyft dataset (description, summary, asset), the budget notes and a
    released result."""
    ds = client.datasets[dataset]
    parts = [repr(client.datasets), repr(ds), ds.meta.to_json(), ds.mock.to_csv(index=False),
             ds.mock.to_json(), json.dumps(client.budgets(), default=str),
             json.dumps(result.raw, default=str), repr(result)]
    for raw in client.client.datasets.get_all():
        if raw.name == dataset:
            desc = raw.description
            parts += [str(getattr(desc, "text", desc)), str(raw.summary),
                      raw.assets[0].mock.to_csv(index=False)]
    return "\n".join(parts)


@slow
def test_a_researcher_finds_no_patient_id_in_anything_published(live):
    """ATTACK: the researcher searches every published text for each id (as written and as the
    number a reader makes of it) and for the id column's name. Nothing with --id-column; the
    same file uploaded without it puts the column in the metadata, the mock, the model and
    the upload warnings, and its ids in the data every job reads."""
    from datasite.storage import read_private

    site, client, ids = live["site"], live["client"], live["ids"]
    text = published(client, "bc_ids", live["results"]["bc_ids"])
    assert len(text) > 100_000  # the mock and the model are in it
    assert leaked(text, ids) == [] and ID not in text
    assert ID not in live["notes"]["bc_ids"]  # the owner's upload warnings
    config = live["results"]["bc_ids"].raw["model_config"]
    assert ID not in json.dumps(config) and len(client.datasets["bc_ids"].meta.features) == 30
    data, meta = read_private(site.state.dataset("bc_ids")["path"])  # what every job reads
    assert leaked(data.to_csv(), ids) == [] and ID not in data.columns

    # the defence off: the same search finds the column everywhere, the ids in the job's data
    off = published(client, "bc_plain", live["results"]["bc_plain"])
    assert off.count(ID) >= 4 and ID in json.dumps(live["results"]["bc_plain"].raw["model_config"])
    assert "looks like an identifier" in live["notes"]["bc_plain"]
    plain, _ = read_private(site.state.dataset("bc_plain")["path"])
    assert len(leaked(plain.to_csv(), ids)) == N


@slow
def test_forget_by_patient_id_updates_a_removal_enabled_model(live, capsys):
    from datasite.storage import patient_record, read_private, record_ids

    site, client, ids = live["site"], live["client"], live["ids"]
    job = client.submit(researcher.jobs.RemovableLogReg("bc_ids", delta=1e-6, **REMOVABLE))
    site.run(job.id, progress=False)
    site.release(job.id)
    job.wait(timeout=120, progress=False)
    path = site.state.dataset("bc_ids")["path"]
    trained = json.loads(site.state.models_for("bc_ids")[0]["record_ids_json"])
    target = trained[5]  # no record was dropped at upload: record id = row of the file
    real = breast_cancer_frame()
    home = ["--home", str(site.home.root)]

    assert cli.main(["forget", site.name, "bc_ids", "--record", ids[target], *home]) == 0
    out = capsys.readouterr().out
    assert f"Patient '{ids[target]}' (record {target}) removed from bc_ids for good" in out
    assert "fresh DP release v" in out
    data, meta = read_private(path)
    assert meta.n_records == len(data) == N - 1 and target not in record_ids(path).tolist()
    assert not (data.to_numpy() == real.iloc[target].to_numpy()).all(axis=1).any()
    assert patient_record(path, ids[target]) is None
    (update,) = job.updates()
    assert update.status == "updated" and update.version == 1
    assert not leaked(json.dumps(update.raw, default=str), ids)

    # a second request for the same patient, and an unknown one: refused, nothing named
    for pid in (ids[target], "000000000000000001"):
        assert cli.main(["forget", site.name, "bc_ids", "--record", pid, *home]) == 2
        err = capsys.readouterr().err
        assert "is not in bc_ids (or was already forgotten)" in err
        assert not leaked(err.replace(pid, ""), ids)
    assert len(read_private(path)[0]) == N - 1


@slow
def test_a_new_version_has_its_own_id_map(live, capsys):
    """upload --replace: the new file's ids name its records; the old version's do not."""
    from datasite.storage import patient_record, read_private

    site, ids, d = live["site"], live["ids"], live["dir"]
    new_ids = patient_ids(300, seed=1)
    assert not set(new_ids) & set(ids)
    csv = write_table(d / "v2.csv", new_ids, breast_cancer_frame().iloc[:300])
    report = site.replace_dataset("bc_ids", table=str(csv), schema=breast_cancer_schema(300),
                                  id_column=ID)
    path = report["path"]
    assert path.endswith("bc_ids.v2") and report["patient_ids"]
    assert patient_record(path, new_ids[7]) == 7 and patient_record(path, ids[7]) is None
    with pytest.raises(SiteError, match="is not in bc_ids"):
        site.forget("bc_ids", ids[7], data_only=True)
    real = breast_cancer_frame()
    site.forget("bc_ids", new_ids[7], data_only=True)
    data, _ = read_private(path)
    assert len(data) == 299
    assert not (data.to_numpy() == real.iloc[7].to_numpy()).all(axis=1).any()
