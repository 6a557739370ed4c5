"""Every rendering of a job template carries a fresh nonce in its function name, so the same job
can be submitted twice (PySyft refuses a second request for identical code); the owner still
recognises only exact renderings, and the nonce never reaches the spec."""
from __future__ import annotations

import re

import pytest

from shared.jobs import SPEC_KINDS, DPSGDTableSpec
from shared.jobs.dpal import DPALSpec
from shared.jobs.dpsgd_images import DPSGDImageSpec
from shared.jobs.federated import FedRoundSpec, FedScheduleSpec
from shared.jobs.removal import RemovalSpec
from shared.jobs.stats import DPStatsSpec
from shared.template import NONCE_HEX, func_name_for, new_nonce, recognise, render

EXAMPLES = [
    DPSGDTableSpec(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5, hidden=8),
    FedScheduleSpec(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5, rounds=2),
    FedRoundSpec(dataset="bc", schedule="ab" * 16, round=1, init_state="c3RhdGU="),
    DPSGDImageSpec(dataset="cxr", epsilon=3.0, delta=1e-5),
    DPALSpec(dataset="bc", epsilon=3.0, delta=1e-5),
    RemovalSpec(dataset="bc", delta=1e-5),
    DPStatsSpec(dataset="bc", queries=[{"type": "count", "epsilon": 0.5}]),
]


def _specs() -> list[dict]:
    """One spec of every registered kind (a bare one for kinds added as job modules)."""
    specs = [s.to_dict() for s in EXAMPLES]
    known = {s["kind"] for s in specs}
    return specs + [{"kind": k, "dataset": "bc"} for k in sorted(SPEC_KINDS) if k not in known]


SPEC = EXAMPLES[0].to_dict()


def _name(source: str) -> str:
    return re.search(r"^def (\w+)\(data\):$", source, re.M).group(1)


def test_examples_cover_the_built_in_kinds():
    assert {s.KIND for s in EXAMPLES} <= set(SPEC_KINDS)
    assert len({s.KIND for s in EXAMPLES}) == len(EXAMPLES) == 7


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s["kind"])
def test_every_kind_round_trips_with_a_fresh_nonce(spec):
    first, second = render(spec), render(spec)
    assert first != second  # two submissions of one job are two distinct code requests
    assert recognise(first) == spec and recognise(second) == spec  # the nonce is not in the spec
    assert _name(first) != _name(second)
    assert re.fullmatch(rf"dpjob_{spec['kind']}_[0-9a-f]{{{NONCE_HEX}}}", _name(first))


def test_nonces_and_func_names_are_unique():
    nonces = {new_nonce() for _ in range(2000)}
    assert len(nonces) == 2000 and all(re.fullmatch(r"[0-9a-f]{12}", n) for n in nonces)
    assert len({_name(render(SPEC)) for _ in range(500)}) == 500


def test_a_given_nonce_renders_deterministically():
    nonce = new_nonce()
    assert render(SPEC, nonce) == render(SPEC, nonce)
    assert _name(render(SPEC, nonce)) == func_name_for(SPEC, nonce) == f"dpjob_dpsgd_table_{nonce}"


@pytest.mark.parametrize("bad", ["", "abc", "0" * 11, "0" * 13, "ABCDEF012345", "g" * 12,
                                 "0123456789a ", "01234567890_", None, 123456789012])
def test_a_malformed_nonce_is_refused_when_rendering(bad):
    with pytest.raises(ValueError, match="nonce must be 12 lower-case hex digits"):
        func_name_for(SPEC, bad)
    if bad is not None:  # render(spec) without a nonce draws a fresh one
        with pytest.raises(ValueError, match="nonce must be 12 lower-case hex digits"):
            render(SPEC, bad)


def _with_name(source: str, name: str) -> str:
    return source.replace(f"def {_name(source)}(data):", f"def {name}(data):")


@pytest.mark.parametrize("name", [
    "dpjob_dpsgd_table_0123456789a",  # nonce too short
    "dpjob_dpsgd_table_0123456789abc",  # too long
    "dpjob_dpsgd_table_0123456789AB",  # not lower-case hex
    "dpjob_dpsgd_table0123456789ab",  # separator missing
    "dpjob_dp_stats_0123456789ab",  # the name's kind is not the spec's
    "dpjob_dpsgd_table_x_0123456789ab",  # anything extra in the name
    "job_dpsgd_table_0123456789ab",
    "steal_0123456789ab",
])
def test_a_tampered_function_name_is_custom_code(name):
    source = render(SPEC)
    assert recognise(_with_name(source, "dpjob_dpsgd_table_0123456789ab")) == SPEC  # control
    assert recognise(_with_name(source, name)) is None


@pytest.mark.parametrize("edit", [
    lambda s: s.replace('"""\n', '"""\n    import os; os.system("id")\n', 1),  # extra code
    lambda s: s.replace("    from shared.runner", "    import os\n    from shared.runner"),
    lambda s: s.replace("run_job(", "print(", 1),
    lambda s: s.replace("Do not edit.", "Do not edit!"),
    lambda s: s.replace("(data):", "(data, nonce='0123456789ab'):"),  # a nonce smuggled elsewhere
    lambda s: s + "nonce = '0123456789ab'\n",
    lambda s: "# 0123456789ab\n" + s,
    lambda s: s.replace("@sy.syft_function_single_use(data=asset)", "@sy.syft_function(data=asset)"),
])
def test_any_other_edit_is_custom_code(edit):
    source = render(SPEC)
    tampered = edit(source)
    assert tampered != source
    assert recognise(tampered) is None


def test_old_format_requests_are_still_recognised():
    """Requests rendered before nonces named the function after a 12-hex hash of the spec:
    the same shape, so requests already on a site stay recognised."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:12]
    assert recognise(render(SPEC, digest)) == SPEC
