"""Researcher-chosen specs cannot stall the owner's pricing or forge the owner's review.

Attacks, as a researcher would write them: a spec dict typed by hand (what the rendered template
carries), priced on the owner's side (``shared.privacy.pricing.planned_event``) and shown by
``datasite review`` (``datasite.cli.print_request``). Defences: ``shared.jobs.bounds`` (every field
bounded in type, range and form; work and model size bounded against the metadata),
``shared.display`` (escaping), ``datasite.pricing_worker`` (a deadline and a memory cap).
"""
from __future__ import annotations

import io
import math
import os
import time

import pytest

from shared.jobs import bounds
from shared.data import DatasetMeta
from shared.display import escape, escape_lines
from shared.privacy.pricing import planned_event
from shared.jobs import SPEC_KINDS, SpecError, spec_from_dict
from shared.template import recognise, render

# the demo's breast-cancer table (569 records, 30 features) and a small image set
FEATURES = {f"f{i}": "float64" for i in range(30)}
META = DatasetMeta(name="bc", kind="table", n_records=569, label="diagnosis", labels=[0, 1],
                   features=FEATURES)
IMAGES = DatasetMeta(name="cxr", kind="images", n_records=400, label="label", labels=[0, 1],
                     image_shape=[28, 28])
ESC = "\x1b[2K\r"
# one valid spec of every kind (every field a researcher can set is checked against it)
VALID = {
    "dpsgd_table": dict(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5),
    "fed_dpsgd_table": dict(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5, rounds=3),
    "fed_round": dict(dataset="bc", schedule="0123456789abcdef0123456789abcdef", round=0),
    "dpsgd_images": dict(dataset="cxr", epsilon=3.0, delta=1e-5),
    "dpal": dict(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5),
    "removal_logreg": dict(dataset="bc", delta=1e-6, label="diagnosis"),
    "dp_stats": dict(dataset="bc", queries=[{"type": "count", "epsilon": 0.5}]),
    "finetune": dict(dataset="cxr", backbone="lite0", epsilon=3.0, delta=1e-5),
}
# the values the findings used: 931 s to price, MemoryError at 4.9 GB, aborted pricing
FOUND = [dict(epochs=10000, batch_size=1), dict(epsilon=1e308), dict(epsilon=1e-4),
         dict(epochs=10**30)]


def _spec(kind: str, **change) -> dict:
    return {"kind": kind, **VALID[kind], **change}


def _fields(kind: str, type_name: str) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(SPEC_KINDS[kind]) if str(f.type) == type_name]


def test_every_kind_has_a_valid_example():
    assert set(VALID) == set(SPEC_KINDS)
    for kind in VALID:
        spec_from_dict(_spec(kind)).validate()


# -- bounds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,field", [(k, f) for k in VALID for f in _fields(k, "str")])
def test_every_string_field_refuses_control_characters_without_metadata(kind, field):
    """No free text anywhere: a string field is an enum, a name pattern, base64 or an id."""
    good = _spec(kind).get(field) or "0123456789abcdef0123456789abcdef"
    for bad in (good + ESC, good + "\u202e", good + "\u200b", "\n" + good):
        with pytest.raises(SpecError, match=field):
            spec_from_dict(_spec(kind, **{field: bad}))
    if field == "init_state":  # base64 weights: as long as the model's, checked on the meta
        spec_from_dict(_spec(kind, **{field: "A" * 100_000}))
        # a round runs as its schedule with the round's state (datasite/rounds.py)
        job = spec_from_dict(_spec("fed_dpsgd_table", **{field: "A" * 100_000}))
        with pytest.raises(SpecError, match="init_state is 100000 characters long"):
            job.validate(META)
    else:
        with pytest.raises(SpecError, match=field):
            spec_from_dict(_spec(kind, **{field: "x" * 100_000 + good}))


@pytest.mark.parametrize("kind,field", [(k, f) for k in VALID
                                        for f in _fields(k, "int") + _fields(k, "float")])
def test_every_number_field_is_bounded_without_metadata(kind, field):
    huge = 10**30 if field in _fields(kind, "int") else 1e308
    for bad in (huge, -1, True, math.inf):
        with pytest.raises(SpecError, match=field):
            spec_from_dict(_spec(kind, **{field: bad}))


@pytest.mark.parametrize("change", FOUND)
def test_the_found_specs_fail_on_the_researcher_side_before_anything_is_sent(change):
    from researcher import jobs

    with pytest.raises(SpecError) as e:
        jobs.DPSGD("bc", "diagnosis", delta=1e-5, **{"epsilon": 3.0, **change})
    field = next(iter(change))
    assert field in str(e.value) and ("allowed" in str(e.value) or "at most" in str(e.value))


@pytest.mark.parametrize("change", FOUND + [dict(epochs=5000, batch_size=1),
                                            dict(epochs=300, batch_size=5),
                                            dict(target={"mu": 1e6}, epsilon=0.0),
                                            dict(target={"tpr": 0.99, "fpr": 1e-6},
                                                 epsilon=0.0)])
def test_owner_pricing_refuses_expensive_specs_in_well_under_a_second(change):
    """The attack: a hand-written spec goes straight to the owner's pricing."""
    t0 = time.perf_counter()
    with pytest.raises(SpecError):
        planned_event(_spec("dpsgd_table", **change), META)
    assert time.perf_counter() - t0 < 1.0


def test_errors_name_the_field_the_value_and_the_range():
    with pytest.raises(SpecError) as e:
        spec_from_dict(_spec("dpsgd_table", epsilon=1e308))
    assert "epsilon=1e+308" in str(e.value) and "[0.01, 20]" in str(e.value)
    with pytest.raises(SpecError, match=r"seed=4294967296 is out of range: allowed "
                                        r"0\.\.4294967295"):
        spec_from_dict(_spec("dpsgd_table", seed=2**32))
    with pytest.raises(SpecError, match=r"choose batch_size >= 5"):
        spec_from_dict(_spec("dpsgd_table", batch_size=1)).validate(META)
    with pytest.raises(SpecError, match=r"delta=1e-11 is out of range: allowed \[1e-10, 0.01\]"):
        spec_from_dict(_spec("dpsgd_table", delta=1e-11))


def test_work_and_model_size_are_bounded_against_the_metadata():
    wide = DatasetMeta(name="bc", kind="table", n_records=569, label="diagnosis",
                       labels=[0, 1], features={f"f{i}": "float64" for i in range(3000)})
    cases = [
        ("dpsgd_table", dict(epochs=3000, batch_size=64), META, "DP-SGD steps"),
        ("fed_dpsgd_table", dict(epochs=300, batch_size=64, rounds=10), META, "DP-SGD steps"),
        ("dpsgd_table", dict(model="mlp", hidden=4096), wide, "parameters"),
        ("dpsgd_images", dict(model="resnet9", width=128, batch_size=64), IMAGES, "parameters"),
        ("dpsgd_images", dict(model="resnet9", width=64, batch_size=256), IMAGES,
         "per-sample gradients"),
        ("dpal", dict(start_size=100, query_sizes=[50] * 3, batch_size=2), META,
         "choose batch_size"),
        ("dpal", dict(start_size=100, query_sizes=[50] * 3, batch_size=4,
                      epochs_per_round=500.0), META, "DP-SGD steps"),
    ]
    for kind, change, meta, words in cases:
        with pytest.raises(SpecError, match=words):
            spec_from_dict(_spec(kind, **change)).validate(meta)
    # the same model with a physical batch that fits is fine
    spec_from_dict(_spec("dpsgd_images", model="resnet9", width=64, batch_size=256,
                         physical_batch_size=32)).validate(IMAGES)
    with pytest.raises(SpecError, match="query_sizes must be 1..3"):
        spec_from_dict(_spec("dpal", query_sizes=[10] * 4))  # rounds: no metadata needed


def test_stats_queries_are_bounded_in_number_size_and_text():
    q = {"type": "histogram", "column": "f0", "epsilon": 0.1, "categories": [0, 1]}
    for change, words in [
        (dict(queries=[q] * 101), "at most 100"),
        (dict(queries=[{**q, "column": "f0" + ESC}]), "column"),
        (dict(queries=[{**q, "name": "\u202eevil"}]), "name"),
        (dict(queries=[{**q, "categories": ["a", "b\x1b[1A"]}]), "categories"),
        (dict(queries=[{**q, "categories": list(range(20_000))}]), "at most"),
        (dict(queries=[{"type": "quantile", "column": "f0", "bounds": [0, 1], "epsilon": 0.1,
                        "alphas": [0.5] * 1000}]), "alphas"),
        (dict(queries=[{**q, "\x1b": 1}]), "key"),
    ]:
        with pytest.raises(SpecError, match=words):
            spec_from_dict(_spec("dp_stats", **change))


def test_demo_notebook_and_test_values_stay_valid():
    from researcher import jobs

    jobs.DPSGD("bc", "diagnosis", epsilon=3.0, delta=1e-5, epochs=30, batch_size=64,
               clip_norm=1.0, learning_rate=1.0, model="logreg").spec.validate(META)
    jobs.DPSGD("bc", "diagnosis", epsilon=1.0, delta=1e-5, epochs=2000,
               batch_size=64).spec.validate(META)  # tests/test_crash.py's long job
    spec_from_dict(_spec("fed_dpsgd_table", epochs=4, batch_size=16, learning_rate=2.0,
                         epsilon=4.0)).validate(META)
    jobs.DPActiveLearning("bc", epsilon=3.0, delta=1e-5, label="diagnosis", eps_selection=0.6,
                          start_size=60, query_sizes=[40, 40], batch_size=32,
                          epochs_per_round=3, learning_rate=2.0).spec.validate(META)
    jobs.DPSGDImages("cxr", epsilon=3.0, delta=1e-5, model="head", backbone="pixels", epochs=5,
                     batch_size=64).spec.validate(IMAGES)


def test_size_mirrors_agree_with_the_real_models():
    from shared.training.backbones import feature_dim
    from shared.training.models import build_model

    for shape in ([28, 28], [28, 28, 3], [64, 48, 1], [8, 8], [100, 60, 3]):
        for bb in ("scatter", "random_conv", "pixels"):
            assert bounds.backbone_dim(bb, shape) == feature_dim(bb, shape), (bb, shape)
    for model, width, hidden, bb in [("cnn", 4, 0, ""), ("cnn", 0, 0, ""),
                                     ("resnet9", 4, 0, ""), ("head", 0, 0, "pixels"),
                                     ("head", 0, 8, "random_conv")]:
        shape = [28, 28, 3]
        nf = bounds.backbone_dim(bb, shape) if model == "head" else 0
        m = build_model(model, nf, 3, hidden, in_channels=3, image_size=shape[:2],
                        width=width or None, backbone=bb or None)
        real = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert bounds.image_params(model, shape, 3, width, hidden, bb) == real, model
    for model, hidden in (("logreg", 32), ("mlp", 16)):
        real = sum(p.numel() for p in build_model(model, 30, 2, hidden).parameters())
        assert bounds.table_params(model, 30, 2, hidden) == real


# -- the worst spec the bounds allow ----------------------------------------------------------
# The sample rate at its floor (an epoch of 100 steps: 500 training records at batch 5), the
# step cap, a mu target (calibrated on the trade-off curve), the most metrics: the slowest
# corner found (epsilon targets there: 1.5-2.5 s; DP-AL at 3 rounds: 6 s; stats: 2.3 s).
WORST = dict(test_fraction=69 / 569, batch_size=5, epochs=bounds.STEPS_MAX // 100,
             epsilon=0.0, target={"mu": bounds.MU_MAX}, delta=1e-6,
             metrics_epsilon=bounds.METRICS_EPSILON_MAX, seed=7)
WORST_PRICING_S = 30.0  # measured 8 s on a loaded 2-core machine; the assert leaves margin


def test_worst_allowed_spec_prices_in_seconds():
    spec = _spec("dpsgd_table", **WORST)
    job = spec_from_dict(spec).validate(META)
    assert bounds.dpsgd_steps(500, 5, job.epochs) == bounds.STEPS_MAX
    t0 = time.perf_counter()
    planned_event(spec, META)
    assert time.perf_counter() - t0 < WORST_PRICING_S


# -- display -----------------------------------------------------------------------------------
def test_escape_makes_every_dangerous_character_visible():
    raw = "a\x1b[31mb\rc\bd\n\u202ee\u2066f\u200bg\ufeffh\x7f\x85"
    shown = escape(raw)
    assert shown == ("a\\x1b[31mb\\x0dc\\x08d\\x0a\\u202ee\\u2066f\\u200bg\\ufeffh\\x7f"
                     "\\x85")
    assert shown.isprintable() and shown.isascii()
    assert escape("plain text, ünïcode ok") == "plain text, ünïcode ok"
    long = escape("x" * 10_000)
    assert len(long) < 300 and long.endswith("...[9800 more chars not shown]")
    lines = escape_lines("ok\n\x1b[1Aup\r\tx\n" * 1000, max_lines=5)
    assert lines[:3] == ["ok", "\\x1b[1Aup\\x0d    x", "ok"]
    assert lines[-1] == "...[1996 more lines not shown]"


def _owner_view(spec: dict, meta: DatasetMeta) -> dict:
    """What the owner's ``describe_request`` builds from a submitted template (no server)."""
    source = render(spec)  # exactly what the researcher's code request carries
    got = recognise(source)
    assert got == spec
    try:
        spec_from_dict(got).validate(meta)
        validation = "ok"
    except (SpecError, TypeError, ValueError) as e:
        validation = str(e)
    return {"request_id": "deadbeef" * 4, "researcher": "alice@uni.edu", "state": "pending",
            "submitted": "2025-01-01 00:00:00", "function": "dpjob", "template": True,
            "kind": spec["kind"], "dataset": spec["dataset"], "spec": got,
            "validation": validation}


def _review_text(info: dict) -> str:
    from datasite.cli import print_request

    buf = io.StringIO()
    print_request(info, file=buf)
    return buf.getvalue()


def _lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_review_shows_true_epsilon_and_rounds_despite_escapes_in_init_state():
    """The finding: eps=2.5 and 20 rounds displayed as eps=0.3 and 2 rounds."""
    forged = ("\x1b[3A\r    epsilon = 0.3\x1b[K\x1b[2B\r\x1b[K\n    rounds = 2\x1b[K"
              "\u202e\u200b")
    spec = {**_spec("fed_dpsgd_table", epsilon=2.5, rounds=20), "init_state": forged}
    info = _owner_view(spec, META)
    assert "init_state" in info["validation"]  # refused by validation
    text = _review_text(info)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert _lines_starting(text, "    epsilon = ") == ["    epsilon = 2.5"]
    assert _lines_starting(text, "    rounds = ") == ["    rounds = 20"]
    assert "\\x1b[3A" in text  # the attempt itself is visible to the owner


@pytest.mark.parametrize("kind,field,meta", [("dpal", "backbone", META),
                                             ("dpsgd_images", "backbone", IMAGES),
                                             ("dpsgd_table", "label", META),
                                             ("removal_logreg", "extractor", META)])
def test_review_escapes_any_string_field(kind, field, meta):
    spec = _spec(kind, **{field: "scatter\x1b[1A\r    epsilon = 0.1\u2066"})
    info = _owner_view(spec, meta)
    assert field in info["validation"]
    text = _review_text(info)
    assert "\x1b" not in text and "\r" not in text and "\u2066" not in text
    assert _lines_starting(text, "    epsilon = ") in ([], [f"    epsilon = {spec.get('epsilon')}"])


def test_review_escapes_unknown_keys_researcher_and_custom_code():
    info = _owner_view({**_spec("dpsgd_table"), "x\x1b[2J": "y\n    epsilon = 0.1"}, META)
    info["researcher"] = "eve\x1b[2K\r@uni.edu"
    text = _review_text(info)
    assert "\x1b" not in text and _lines_starting(text, "    epsilon = ") == ["    epsilon = 3.0"]
    code = "def f(data):\n    return 1  \x1b[8m# hidden\x1b[0m\r# looks harmless\n" * 3
    custom = {**info, "template": False, "kind": "custom", "spec": None, "code": code,
              "dataset": ["bc\x1b[1A"], "validation": None}
    text = _review_text(custom)
    assert "\x1b" not in text and "\r" not in text
    assert "    | def f(data):" in text and "\\x1b[8m# hidden\\x1b[0m\\x0d# looks" in text


# -- the pricing worker ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker():
    from datasite import pricing_worker

    pricing_worker.warm_up()
    yield pricing_worker
    pricing_worker.shutdown()


def test_price_bounded_gives_the_in_process_price(worker):
    from shared.privacy.accounting import event_to_json

    from shared.privacy.pricing import record_events

    spec = _spec("dpsgd_table", epochs=3, batch_size=64, seed=11)
    got = worker.price_bounded(spec, META.to_json(), timeout_s=60, memory_mb=2048)
    assert got == (event_to_json(planned_event(spec, META)), None)
    t0 = time.perf_counter()
    assert worker.price_bounded(spec, META.to_json(), 60, 2048) == got  # cached
    assert time.perf_counter() - t0 < 0.05
    dpal = _spec("dpal", start_size=60, query_sizes=[40], batch_size=32, epochs_per_round=2.0)
    assert worker.price_bounded(dpal, META.to_json(), 120, 2048) == (
        event_to_json(planned_event(dpal, META)), record_events(dpal, META))
    for bad, error in ((dict(epsilon=1e308), SpecError),
                      (dict(epochs=3000, batch_size=64), SpecError)):
        with pytest.raises(worker.PricingError) as e:  # the owner catches PricingError alone
            worker.price_bounded(_spec("dpsgd_table", **bad), META.to_json(), 60, 2048)
        assert isinstance(e.value, error)


def test_a_priced_requests_epsilon_is_the_ledgers_own_and_computed_once(worker):
    """With the dataset's delta, the pricing child computes the request's epsilon too, and the
    owner's reservation and commit reuse it: the very number the ledger computes from the event
    (here computed afresh after forgetting it), with no PLD composed in the owner's process."""
    from unittest import mock

    from datasite.ledger import Ledger
    from shared.privacy import accounting

    spec = _spec("dpsgd_table", epochs=2, batch_size=32, seed=16)
    accounting.clear_pld_cache()
    event_json, _ = worker.price_bounded(spec, META.to_json(), 60, 2048, delta=1e-5)
    with mock.patch.object(accounting, "epsilon", side_effect=AssertionError("composed again")):
        kept = Ledger.epsilon_of([event_json], 1e-5)
    accounting.clear_pld_cache()
    assert kept == Ledger.epsilon_of([event_json], 1e-5) == accounting.epsilon(
        accounting.event_from_json(event_json), 1e-5)
    with pytest.raises(AssertionError, match="composed again"), mock.patch.object(
            accounting, "epsilon", side_effect=AssertionError("composed again")):
        Ledger.epsilon_of([event_json], 2e-5)  # another delta: its own number
    # what the pricing child computed on the way (its sigma's checks) waits for the job
    from datasite import job_process

    handed = list(job_process._JOB_EPSILONS.items())  # pylint: disable=protected-access
    assert handed
    (last_event, last_delta), eps = handed[-1]
    accounting.clear_pld_cache()
    assert eps == accounting.epsilon_of_json(last_event, last_delta)


def test_price_bounded_kills_pricing_at_the_deadline(worker):
    spec = _spec("dpsgd_table", epochs=200, batch_size=5, test_fraction=69 / 569, seed=12)
    t0 = time.perf_counter()
    with pytest.raises(worker.PricingTimeout, match="longer than 0.2 s"):
        worker.price_bounded(spec, META.to_json(), timeout_s=0.2, memory_mb=2048)
    assert time.perf_counter() - t0 < 2.0  # killed at 0.2 s (not by the CPU-time backstop)
    # the server goes on serving
    worker.price_bounded(_spec("dp_stats"), META.to_json(), timeout_s=60, memory_mb=2048)


def test_price_bounded_caps_memory(worker, monkeypatch):
    # no spec within the bounds needs much memory; the test-only ballast stands in for one
    spec = _spec("dpsgd_table", epochs=3, batch_size=64, seed=13)
    monkeypatch.setattr(worker, "_ALLOCATE_MB_FOR_TESTS", 1024)
    with pytest.raises(worker.PricingMemoryError, match="more than 64 MiB"):
        worker.price_bounded(spec, META.to_json(), timeout_s=120, memory_mb=64)
    worker.price_bounded(spec, META.to_json(), timeout_s=120, memory_mb=4096)  # room: priced


@pytest.mark.parametrize("launcher", [True, False], ids=["launched", "fresh"])
def test_the_pricing_server_is_its_owners_own(launcher, warm_server_launcher, monkeypatch):
    """The pricing server, forked from the warm launcher (the tests') or started fresh
    (``python -m datasite.pricing_worker``, a deployment's), prices the same and is gone after
    ``shutdown``; the launched one has the launcher, not the owner, as its parent."""
    from datasite import pricing_worker
    from datasite.launch import process_alive
    from datasite.launch import LAUNCHER_ENV
    from shared.privacy.accounting import event_to_json

    if not launcher:
        monkeypatch.delenv(LAUNCHER_ENV)
    pricing_worker.shutdown()
    try:
        # another spec each time: a cached price would not ask the server
        spec = _spec("dpsgd_table", epochs=2, batch_size=64, seed=14 if launcher else 15)
        assert pricing_worker.price_bounded(spec, META.to_json(), 60, 2048)[0] == \
            event_to_json(planned_event(spec, META))
        server = pricing_worker._SERVER.pid  # pylint: disable=protected-access
        with open(f"/proc/{server}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        assert parent == (warm_server_launcher._proc.pid if launcher else os.getpid())
    finally:
        pricing_worker.shutdown()
    t = time.monotonic()
    while process_alive(server):
        assert time.monotonic() - t < 10, "the pricing server outlived its shutdown"
        time.sleep(0.05)


def test_stats_quantile_work_is_bounded():
    def quantile(levels, resolution):
        return {"type": "quantile", "column": "f0", "bounds": [0, 1], "epsilon": 0.1,
                "resolution": resolution, "alphas": [(j + 1) / (levels + 1) for j in range(levels)]}

    spec_from_dict(_spec("dp_stats", queries=[quantile(99, 1e-4)]))  # ~1 s to price: allowed
    with pytest.raises(SpecError, match="coarser resolution"):
        spec_from_dict(_spec("dp_stats", queries=[quantile(99, 1e-4)] * 2))
    with pytest.raises(SpecError, match="quantile levels"):
        spec_from_dict(_spec("dp_stats", queries=[quantile(99, 1e-2)] * 3))
    t0 = time.perf_counter()
    planned_event(_spec("dp_stats", queries=[quantile(99, 1e-4)]), META)
    assert time.perf_counter() - t0 < WORST_PRICING_S


def test_review_shows_unreadable_unregistered_and_unpriced_requests_escaped():
    base = _owner_view(_spec("dpsgd_table"), META)
    unpriced = {**base, "registered": False, "researcher": "mallory\x1b[8m",
                "cost_error": "Pricing request deadbeef failed: took longer\x1b[2A than 120 s"}
    text = _review_text(unpriced)
    assert "\x1b" not in text and "NOT a registered researcher" in text
    assert "privacy cost: NOT PRICED -- Pricing request deadbeef failed" in text
    not_code = {**base, "template": False, "spec": None, "code": None, "kind": "not code",
                "request_type": "enable worker pool\r\x1b[1Aok", "validation": "not a code request"}
    text = _review_text(not_code)
    assert "\x1b" not in text and "\r" not in text and "  not a code request" in text


def test_researcher_side_shows_owner_text_escaped():
    """Attack from the other side: a deny reason or result kind carrying ANSI escapes must not
    rewrite the researcher's notebook output either."""
    from researcher.errors import JobDenied
    from researcher.results import JobResult

    evil = "ok\x1b[2K\r\x1b[1Aeps=0.1\u202e"
    assert "\x1b" not in str(JobDenied("abcdef0123", evil)) and "\\x1b" in str(JobDenied("a", evil))
    shown = repr(JobResult({"kind": evil, "metrics": {"note": evil}, "privacy": {}}))
    assert "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown
