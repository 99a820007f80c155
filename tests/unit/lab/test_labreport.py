"""Outcomes carried out of the guest: encoding reports, folding phases per node id."""

from __future__ import annotations

from support import labreport as lr


def rec(
    nodeid: str,
    when: str,
    outcome: str,
    *,
    text: str = "",
    longrepr: object = None,
    wasxfail: str | None = None,
    sections: tuple[tuple[str, str], ...] = (),
) -> str:
    return lr.encode(
        nodeid=nodeid,
        when=when,
        outcome=outcome,
        longrepr=longrepr,
        longreprtext=text,
        duration=0.5,
        wasxfail=wasxfail,
        sections=sections,
    )


NODE = "tests/lab/test_x.py::TestA::test_b[v6-2001:db8::1]"


def test_passed_needs_a_call_report() -> None:
    out = lr.fold(
        [rec(NODE, "setup", "passed"), rec(NODE, "call", "passed"), rec(NODE, "teardown", "passed")]
    )
    assert out == {NODE: lr.Outcome(lr.PASSED, "", 1.5)}
    # setup passed, then the guest died: not reported (the host says "no result")
    assert lr.fold([rec(NODE, "setup", "passed")]) == {}


def test_call_failure_carries_text_and_captured_output() -> None:
    lines = [
        rec(NODE, "setup", "passed"),
        rec(
            NODE,
            "call",
            "failed",
            text="assert 1 == 2",
            sections=(("Captured stdout call", "hello"),),
        ),
        rec(NODE, "teardown", "passed"),
    ]
    got = lr.fold(lines)[NODE]
    assert got.status == lr.FAILED
    assert (
        "assert 1 == 2" in got.text and "Captured stdout call" in got.text and "hello" in got.text
    )


def test_setup_or_teardown_failure_is_an_error() -> None:
    got = lr.fold(
        [
            rec(NODE, "setup", "passed"),
            rec(NODE, "call", "passed"),
            rec(NODE, "teardown", "failed", text="charon did not stop"),
        ]
    )[NODE]
    assert got.status == lr.ERROR and got.text.startswith("[teardown] charon did not stop")


def test_skip_reason_and_xfail() -> None:
    skip = rec(NODE, "setup", "skipped", longrepr=("f.py", 3, "Skipped: missing: tcpdump"))
    assert lr.fold([skip])[NODE] == lr.Outcome(lr.SKIPPED, "Skipped: missing: tcpdump", 0.5)
    xf = rec("t.py::x", "call", "skipped", longrepr=("f.py", 3, "r"), wasxfail="known bug")
    assert lr.fold([xf])["t.py::x"].status == lr.XFAILED


def test_garbage_and_truncated_lines_are_ignored() -> None:
    good = rec("t.py::a", "call", "passed")
    assert set(lr.fold(["", "not json", '{"nodeid": "t.py::b", "wh', "[1, 2]", good])) == {
        "t.py::a"
    }


def test_a_passing_test_carries_what_it_printed() -> None:
    lines = [
        rec(NODE, "setup", "passed", sections=(("Captured stdout setup", "booting"),)),
        rec(NODE, "call", "passed", sections=(("Captured stdout call", "lost 0 pings\n"),)),
        rec(NODE, "teardown", "passed"),
    ]
    assert lr.fold(lines)[NODE] == lr.Outcome(lr.PASSED, "lost 0 pings\n", 1.5)
