"""`engine stats`: the numbers of every call equal what its timelines (text and HTML) show."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from callstate.cli import main
from callstate.logs import load_call
from replay import html, textview
from replay.timeline import build
from replay.turns import percentile, turns
from tests.callhelper import BARGE_AND_TOOL, FILLER_AND_RESUME, make_call
from tests.test_timeline import parse

FAILING_TOOL = {**BARGE_AND_TOOL, "tools": {"lookup_shipment": {"error": "timeout", "latency_ms": 900}}}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("stats")
    db = tmp / "calls.db"
    for call_id, script in (("c1", BARGE_AND_TOOL), ("c2", FILLER_AND_RESUME), ("c3", FAILING_TOOL)):
        make_call(tmp, script, call_id, db=db)
    return db


def stats_json(db: Path, capsys, *extra: str) -> dict:  # type: ignore[type-arg]
    assert main(["stats", "--db", str(db), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_equal_what_the_timelines_show(db: Path, capsys) -> None:
    s = stats_json(db, capsys)
    assert [c["call_id"] for c in s["calls"]] == ["c1", "c2", "c3"]
    for c in s["calls"]:
        call = load_call(str(db), c["call_id"])
        tl = build(call.flow, call.events, call_id=c["call_id"], outcome=call.row.outcome)
        tags = parse(html.render(tl))
        sections = tags.find("section", class_="turn")
        shown = [int(x["data-voice-to-voice-ms"]) for x in sections if x["data-voice-to-voice-ms"]]
        assert c["voice_to_voice_ms"] == shown
        assert c["turns"] == len(sections) == len(turns(call.flow, call.events))
        summary = tags.find("dl", class_="summary")[0]
        for key in ("barge_ins", "false_interruptions", "fillers", "reprompts"):
            assert str(c[key]) == summary[f"data-{key.replace('_', '-')}"], (c["call_id"], key)
        for q in ("p50", "p90", "p99"):
            assert str(c[f"v2v_{q}_ms"]) == summary[f"data-v2v-{q}-ms"]
        text = "\n".join(textview.render(tl))
        headers = [int(v) for v in re.findall(r"── turn \d+ at [\d.]+s · voice to voice (\d+) ms", text)]
        assert headers == c["voice_to_voice_ms"]
        assert (f"barge-ins {c['barge_ins']} · false interruptions {c['false_interruptions']} · "
                f"fillers {c['fillers']} · reprompts {c['reprompts']}") in text
    every = [v for c in s["calls"] for v in c["voice_to_voice_ms"]]
    assert s["voice_to_voice_ms"] == {"turns": len(every), "p50": percentile(every, 0.5),
                                      "p90": percentile(every, 0.9), "p99": percentile(every, 0.99)}


def test_turn_taking_counts_tools_and_outcomes(db: Path, capsys) -> None:
    s = stats_json(db, capsys)
    calls = {c["call_id"]: c for c in s["calls"]}
    assert calls["c1"]["barge_ins"] == 1 and calls["c1"]["false_interruptions"] == 0
    assert calls["c2"]["false_interruptions"] == 1 and calls["c2"]["fillers"] == 2 and calls["c2"]["reprompts"] == 1
    tool = s["tools"]["lookup_shipment"]
    assert tool["calls"] == 2 and tool["errors"] == 1 and tool["errors_by_kind"] == {"timeout": 1}
    assert sorted(t["latency_ms"] for c in s["calls"] for t in c["tools"]) == [900, 1200]
    assert tool["p50_ms"] == 900 and tool["max_ms"] == 1200  # nearest rank: a real call's latency
    assert s["outcomes"] == {"caller_hung_up": 3}
    assert s["totals"]["barge_ins"] == sum(c["barge_ins"] for c in s["calls"])


def test_since_filters_calls(db: Path, capsys) -> None:
    assert stats_json(db, capsys, "--since", "2999-01-01")["totals"]["calls"] == 0
    assert stats_json(db, capsys, "--since", "2000-01-01")["totals"]["calls"] == 3


def test_text_report(db: Path, capsys) -> None:
    assert main(["stats", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "3 calls" in out and "voice to voice: p50" in out and "lookup_shipment" in out
    assert re.search(r"^c2\s+caller_hung_up\s+2\s", out, re.M)


def test_a_missing_db_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["stats", "--db", str(tmp_path / "none.db")]) == 1
    assert "no such log" in capsys.readouterr().err


def test_a_call_that_does_not_reproduce_is_named_not_counted(db: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy.db"
    con = sqlite3.connect(db)
    con.execute(f"VACUUM INTO '{copy}'")
    con.close()
    con = sqlite3.connect(copy)
    with con:
        con.execute("UPDATE events SET data=json_set(data, '$.text', 'Edited.') WHERE call_id='c2' AND seq="
                    "(SELECT min(seq) FROM events WHERE call_id='c2' AND type='Speak' AND seq > 5)")
    con.close()
    s = stats_json(copy, capsys)
    bad = next(c for c in s["calls"] if c["call_id"] == "c2")
    assert "does not reproduce (diverges at seq" in bad["error"] and bad["turns"] == 0
    assert s["totals"]["unreadable"] == 1 and s["totals"]["calls"] == 3
