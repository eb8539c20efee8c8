"""Rollback planning: facts parsing, previous release, model records, exact commands."""

from __future__ import annotations

import pytest

from ofactl.errors import OperationError, UsageError
from ofactl.rollback import (
    NodeRollback,
    check_info,
    facts_cmd,
    parse_facts,
    plan_rollback,
    previous_release,
    record_model_cmd,
    switch_cmds,
)

FACTS = """@@rollback current
releases/20261124220000-bbbbbbbb
@@rollback model
models/222222222222
@@rollback releases
20261124210000-aaaaaaaa 111111111111
20261124220000-bbbbbbbb
20261124220000-bbbbbbbb.ofactl-tmp
@@rollback models
111111111111
222222222222
"""


def test_parse_facts() -> None:
    f = parse_facts(FACTS)
    assert f.current == "20261124220000-bbbbbbbb"
    assert f.model == "222222222222"
    assert dict(f.releases) == {"20261124210000-aaaaaaaa": "111111111111",
                                "20261124220000-bbbbbbbb": ""}
    assert f.models == ("111111111111", "222222222222")
    assert previous_release(f) == "20261124210000-aaaaaaaa"
    assert "readlink /opt/ofa/current" in facts_cmd("/opt/ofa")


def test_plan_previous_release_and_its_model() -> None:
    [p] = plan_rollback({"n1": parse_facts(FACTS)})
    assert p == NodeRollback("n1", "20261124220000-bbbbbbbb", "20261124210000-aaaaaaaa",
                             "222222222222", "111111111111", "")
    assert switch_cmds("/opt/ofa", p) == [
        "ln -sfn models/111111111111 /opt/ofa/model.ofactl-tmp && "
        "mv -fT /opt/ofa/model.ofactl-tmp /opt/ofa/model",
        "ln -sfn releases/20261124210000-aaaaaaaa /opt/ofa/current.ofactl-tmp && "
        "mv -fT /opt/ofa/current.ofactl-tmp /opt/ofa/current",
    ]


def test_plan_keeps_model_when_unrecorded_or_pruned() -> None:
    f = parse_facts(FACTS.replace("aaaaaaaa 111111111111", "aaaaaaaa"))
    [p] = plan_rollback({"n1": f})
    assert p.to_model == "222222222222"
    assert p.note == "no model recorded for 20261124210000-aaaaaaaa; model kept"
    g = parse_facts(FACTS.replace("111111111111\n222222222222\n", "222222222222\n"))
    [q] = plan_rollback({"n1": g})
    assert q.note == "model 111111111111 of 20261124210000-aaaaaaaa is no longer on the node; " \
        "model kept"


def test_plan_errors_name_every_node() -> None:
    only = parse_facts(FACTS.replace("20261124210000-aaaaaaaa 111111111111\n", ""))
    with pytest.raises(UsageError) as err:
        plan_rollback({"n1": only, "n2": parse_facts("")})
    assert err.value.message == (
        "rollback: n1: no release older than 20261124220000-bbbbbbbb to go back to; "
        "n2: no current release (never deployed?)")
    with pytest.raises(UsageError, match="release 2025 is not on the node"):
        plan_rollback({"n1": parse_facts(FACTS)}, to="2025")


def test_plan_to_release() -> None:
    [p] = plan_rollback({"n1": parse_facts(FACTS)}, to="20261124220000-bbbbbbbb")
    assert p.to_release == p.from_release and p.to_model == "222222222222"


def test_record_model_cmd() -> None:
    assert record_model_cmd("/opt/ofa", "r1", "abc") == (
        "printf '%s\\n' abc > /opt/ofa/releases/r1/ofactl-model.ofactl-tmp && "
        "mv -fT /opt/ofa/releases/r1/ofactl-model.ofactl-tmp /opt/ofa/releases/r1/ofactl-model")


def test_check_info() -> None:
    p = NodeRollback("n1", "b", "a", "2222", "1111")
    check_info("n1", '{"release": "", "model": {"digest": "1111ffff"}}', p)
    with pytest.raises(OperationError, match="serves model 2222ffff after the rollback"):
        check_info("n1", '{"model": {"digest": "2222ffff"}}', p)
    with pytest.raises(OperationError, match="reports release b after the rollback"):
        check_info("n1", '{"release": "b"}', p)
