"""Timelines: the text one (`engine replay --timeline`) and the HTML page (`--html`), in headless Chromium
where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from callstate.cli import main
from callstate.logs import load_call
from replay import html, textview
from replay.timeline import LANES, build
from replay.turns import turns
from tests.callhelper import BARGE_AND_TOOL, FILLER_AND_RESUME, make_call


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("timeline")
    make_call(tmp, BARGE_AND_TOOL, "c1")
    return make_call(tmp, FILLER_AND_RESUME, "c2", db=tmp / "calls.db")


def timeline(db: Path, call_id: str = "c1"):  # type: ignore[no-untyped-def]
    call = load_call(str(db), call_id)
    return build(call.flow, call.events, call_id=call_id, outcome=call.row.outcome), call


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **want: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(
            v in (a.get(k.rstrip("_").replace("_", "-")) or "").split() for k, v in want.items())]


def parse(page: str) -> Tags:
    p = Tags()
    p.feed(page)
    return p


# ------------------------------------------------------------------------------------- the text timeline

def test_text_timeline_has_a_header_per_turn_with_its_voice_to_voice(db: Path, capsys) -> None:
    assert main(["replay", "c1", "--db", str(db), "--timeline"]) == 0
    out = capsys.readouterr().out
    _, call = timeline(db)
    ts = turns(call.flow, call.events)
    headers = re.findall(r"── turn (\d+) at [\d.]+s · voice to voice (\d+|-) ms", out)
    assert [int(n) for n, _ in headers] == [t.index for t in ts] and len(ts) == 4
    assert [v for _, v in headers] == [str(t.voice_to_voice_ms) for t in ts]
    assert "BARGE-IN" in out and "speaking → interrupted → listening" in out
    assert "tool lookup_shipment → ok (1200 ms)" in out
    assert '"Wait, what day exactly?"' in out
    assert "\x1b[" not in out  # captured output is no terminal: no colour


def test_colour_only_for_a_terminal_without_no_color(db: Path, monkeypatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert textview.use_color(Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not textview.use_color(Tty())  # type: ignore[arg-type]
    tl, _ = timeline(db)
    assert any("\x1b[" in line for line in textview.render(tl, color=True))
    assert not any("\x1b[" in line for line in textview.render(tl, color=False))


def test_a_barge_in_splits_the_agent_speech_into_heard_and_cut_off(db: Path) -> None:
    tl, _ = timeline(db)
    assert len(tl.barge_ins) == 1
    cut_at = tl.barge_ins[0]
    agent = [s for s in tl.spans if s.lane == "agent"]
    heard_before = [s for s in agent if "heard" in s.css.split() and s.end_ms == cut_at]
    cut = [s for s in agent if "cut" in s.css.split()]
    assert heard_before and cut and all(s.start_ms >= cut_at for s in cut)
    # the caller's speech that interrupted is on the barge-in lane, from its start to the confirmation
    barge = next(s for s in tl.spans if s.lane == "barge-ins")
    assert barge.end_ms == cut_at and barge.start_ms < cut_at


def test_false_interruption_filler_and_reprompt_are_on_the_timeline(db: Path) -> None:
    tl, _ = timeline(db, "c2")
    assert len(tl.false_interruptions) == 1 and len(tl.barge_ins) == 1
    assert len(tl.fillers) == 2 and len(tl.reprompts) == 1
    assert any(s.lane == "fillers" for s in tl.spans)
    assert any("resume" in s.css.split() for s in tl.spans if s.lane == "agent")


# ------------------------------------------------------------------------------------- the HTML page

def test_html_page_has_one_section_per_turn_with_its_numbers(db: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "c1.html"
    assert main(["replay", "c1", "--db", str(db), "--html", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    _, call = timeline(db)
    ts = turns(call.flow, call.events)
    tags = parse(page)
    sections = tags.find("section", class_="turn")
    assert [s["data-turn"] for s in sections] == [str(t.index) for t in ts]
    assert [s["id"] for s in sections] == [f"turn-{t.index}" for t in ts]
    assert [s["data-voice-to-voice-ms"] for s in sections] == [str(t.voice_to_voice_ms) for t in ts]
    for s, t in zip(sections, ts, strict=True):
        for key, value in t.parts().items():
            attr = f"data-{key.removesuffix('_ms').replace('_', '-')}-ms"
            assert s[attr] == ("" if value is None else str(value)), (t.index, key)
    assert len(tags.find("svg", class_="wf")) == len(ts)  # a waterfall per turn
    assert {g["data-lane"] for g in tags.find("g", class_="lane")} == set(LANES)


def test_html_page_is_self_contained(db: Path) -> None:
    tl, _ = timeline(db)
    page = html.render(tl)
    tags = parse(page)
    assert not [a for t, a in tags.tags if "src" in a or t == "link"]
    assert all(a.get("href", "#").startswith("#") for t, a in tags.tags if t == "a")
    # the only URL is the SVG namespace, which browsers never fetch
    assert set(re.findall(r"https?://[^\s\"')]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "<style>" in page and "<script>" in page


def test_html_spans_carry_their_details_for_hover(db: Path) -> None:
    tl, _ = timeline(db)
    tags = parse(html.render(tl))
    spans = tags.find("g", class_="sp")
    assert len(spans) == len(tl.spans) and all(s["data-tip"] for s in spans)
    tool = next(s for s in spans if "lane-tools" in (s["class"] or ""))
    assert "lookup_shipment" in (tool["data-tip"] or "") and "ok after 1200 ms" in (tool["data-tip"] or "")
    assert any("cut" in (s["class"] or "").split() for s in spans)
    assert any("preemptive" in (s["class"] or "").split() for s in spans)


def test_html_escapes_what_the_caller_said(db: Path) -> None:
    tl, _ = timeline(db)
    tl.turns[0].caller = "<script>alert(1)</script> & more"
    page = html.render(tl)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


# ------------------------------------------------------------------------------------- headless Chromium

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium) to run the page")
def test_html_page_in_headless_chromium_keeps_every_turn_after_its_script(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "c1.html"
    assert main(["replay", "c1", "--db", str(db), "--html", str(out)]) == 0
    _, call = timeline(db)
    n = len(turns(call.flow, call.events))
    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    tags = parse(dom.stdout)
    assert [s["data-turn"] for s in tags.find("section", class_="turn")] == [str(i) for i in range(1, n + 1)]
    # the script ran: it moved every span's <title> into its tooltip, leaving only the page's own title
    assert dom.stdout.count("<title>") == 1 and page_title(dom.stdout).startswith("call c1")
    png = tmp_path / "c1.png"
    shot = chromium(tmp_path, "--window-size=1400,1600", f"--screenshot={png}", out.as_uri())
    assert shot.returncode == 0 and png.stat().st_size > 20_000  # a drawn page, not a blank one


def page_title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom)
    return m.group(1) if m else ""
