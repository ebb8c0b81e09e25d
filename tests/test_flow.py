"""engine/flow.py and its commands: the example flows, the schema's rules, `engine validate|schema|graph`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from callstate import providers
from callstate.cli import main
from callstate.commands import graph
from callstate.flows import check_flow, check_text, load_flow
from engine import policy
from engine.flow import DEFAULT_FLOW, Flow, Tool, ToolRoute

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.relative_to(ROOT) for p in (ROOT / "flows").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for var in ("SHIPMENT_API_URL", "APPOINTMENT_API_URL"):
        monkeypatch.delenv(var, raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ examples


def test_the_three_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == ["appointment.yaml", "shipment_status.yaml", "support_line.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=str)
def test_example_validates_without_errors_or_warnings(path: Path) -> None:
    report = check_flow(path)
    assert (report.errors, report.warnings) == ([], [])
    flow = report.flow
    assert flow is not None
    llm, stt, tts = (providers.options(k, getattr(flow, k)) for k in ("llm", "stt", "tts"))
    assert (flow.llm.provider, llm.model) == ("groq", "openai/gpt-oss-20b")
    assert (flow.stt.provider, stt.model) == ("deepgram", "nova-3")
    assert (flow.tts.provider, tts.voice) == ("deepgram", "aura-2-thalia-en")
    assert flow.local.caller and flow.local.replies  # runs offline with the scripted providers


def test_shipment_webhook_url_defaults_to_loopback_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = load_flow("flows/shipment_status.yaml")
    tool = flow.tools["lookup_shipment"]
    assert tool.webhook is not None and tool.webhook.url == "http://127.0.0.1:8089/shipments"
    assert list(tool.parameters["properties"]) == ["tracking_number"]
    assert [(m.after_ms, m.text) for m in tool.messages.on_delay] == [(800, "Let me check that.")]
    assert tool.messages.on_error
    assert any(r.tool == "lookup_shipment" for r in flow.local.replies)
    monkeypatch.setenv("SHIPMENT_API_URL", "https://api.example.com/v1/shipments")
    webhook = load_flow("flows/shipment_status.yaml").tools["lookup_shipment"].webhook
    assert webhook is not None and webhook.url == "https://api.example.com/v1/shipments"


def test_appointment_routes_on_the_available_field() -> None:
    flow = load_flow("flows/appointment.yaml")
    assert flow.start_node == "collect_date"
    assert flow.nodes["collect_date"].on_tool["check_availability"] == ToolRoute(
        field="available", cases={"true": "confirm", "false": "collect_date"})
    assert flow.nodes["done"].end
    assert flow.tools["check_availability"].webhook is not None


def test_support_line_routes_digits_speech_and_transfers_to_an_operator() -> None:
    flow = load_flow("flows/support_line.yaml")
    menu = flow.nodes[flow.start_node or ""]
    assert menu.on_dtmf == {"1": "billing", "2": "tech", "0": "operator"}
    assert set(menu.goto) == {"billing", "tech", "operator"}
    transfer = flow.nodes["operator"].transfer
    assert transfer is not None and transfer.to == "+15550100" and transfer.say


# ---------------------------------------------------------------------------------- the schema


def test_a_name_alone_gives_the_default_flow_and_policy() -> None:
    flow = check_text("name: default\ngreeting: Hi! How can I help you today?\n").flow
    assert flow == DEFAULT_FLOW
    assert flow is not None and flow.turn_taking == policy.TurnTaking()


def test_turn_taking_maps_onto_the_policy_dataclasses() -> None:
    flow = load_flow_text("name: x\nturn_taking:\n"
                          "  endpointing: {on_punctuation_ms: 300, trailing_words: [and]}\n"
                          "  barge_in: {min_words: 2}\n")
    assert isinstance(flow.turn_taking.endpointing, policy.Endpointing)
    assert flow.turn_taking.endpointing.on_punctuation_ms == 300
    assert flow.turn_taking.endpointing.trailing_words == ("and",)
    assert flow.turn_taking.endpointing.on_number_ms == policy.Endpointing().on_number_ms
    assert flow.turn_taking.barge_in.min_words == 2


def load_flow_text(text: str) -> Flow:
    report = check_text(text)
    assert report.errors == []
    assert report.flow is not None
    return report.flow


@pytest.mark.parametrize(("fields", "message"), [
    ({"webhook": {"url": "https://x"}, "function": "m:f"}, "not both"),
    ({}, "needs a `webhook` or a `function`"),
])
def test_a_tool_has_exactly_one_target(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Tool.model_validate({"description": "d", **fields})


def test_tool_specs_offer_the_named_tools_with_json_schema_text() -> None:
    flow = load_flow("flows/appointment.yaml")
    (spec,) = flow.tool_specs(["check_availability"])
    assert spec.name == "check_availability"
    assert json.loads(spec.parameters)["required"] == ["date", "time"]


# ---------------------------------------------------------------------------------------- CLI


def test_validate_prints_ok_per_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", *map(str, EXAMPLES))
    assert code == 0
    assert out.splitlines() == [f"ok  {p}" for p in EXAMPLES]


def test_validate_prints_every_error_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "validate", "flows/support_line.yaml", "tests/flows_broken/bad_dtmf.yaml")
    assert code == 1
    assert out.splitlines() == [
        "ok  flows/support_line.yaml",
        "tests/flows_broken/bad_dtmf.yaml:7:7 nodes.menu.on_dtmf.12: must be one DTMF key: 0-9, * or #",
        "tests/flows_broken/bad_dtmf.yaml:8:7 nodes.menu.on_dtmf.a: must be one DTMF key: 0-9, * or #",
    ]


def test_validate_prints_warnings_but_passes_unless_strict(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("name: x\nstart_node: a\nnodes:\n  a: {end: Bye.}\n  b: {end: Bye.}\n")
    code, out, _ = run_cli(capsys, "validate", str(path))
    assert code == 0
    assert out.splitlines() == [f"warning: {path}:5:3 nodes.b: unreachable from start_node 'a'",
                                f"ok  {path}"]
    assert run_cli(capsys, "validate", "--strict", str(path))[0] == 1


def test_validate_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "validate", "flows/nope.yaml")
    assert (code, out, err) == (1, "flows/nope.yaml: cannot read (No such file or directory)\n", "")


def test_validate_never_prints_environment_values(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLSTATE_TEST_SECRET", "hunter2-secret")
    monkeypatch.delenv("CALLSTATE_TEST_UNSET_URL", raising=False)
    code, out, err = run_cli(capsys, "validate", "tests/flows_broken/missing_env.yaml")
    assert code == 1
    assert "CALLSTATE_TEST_UNSET_URL is not set" in out
    assert "hunter2-secret" not in out + err


def test_schema_is_json_schema_of_the_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["$id"] and schema["title"] == "callstate flow"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(Flow.model_fields) == set(schema["properties"])
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    llm = schema["properties"]["llm"]["oneOf"]  # one variant per provider of the registry
    assert [{k: v for k, v in x["properties"]["provider"].items() if k != "description"} for x in llm] == [
        {"enum": ["groq", None]}, {"const": "local"}]
    assert run_cli(capsys, "schema", "-o", str(tmp_path / "flow.json"))[0] == 0
    assert json.loads((tmp_path / "flow.json").read_text()) == schema


FAKE_TABLE = [
    {"trigger": "endpoint", "source": "listening", "dest": "thinking"},
    {"trigger": "speak", "source": ["thinking", "listening"], "dest": "speaking"},
    {"trigger": "barge_in", "source": "speaking", "dest": "listening", "conditions": "barge_in_confirmed"},
    {"trigger": "hang_up", "source": "*", "dest": "ended"},
]


def test_render_states_expands_lists_and_wildcards() -> None:
    assert graph.render_states(FAKE_TABLE, "listening").splitlines() == [
        "stateDiagram-v2",
        "    [*] --> listening",
        "    listening --> thinking: endpoint",
        "    thinking --> speaking: speak",
        "    listening --> speaking: speak",
        "    speaking --> listening: barge_in [barge_in_confirmed]",
        "    listening --> ended: hang_up",
        "    thinking --> ended: hang_up",
        "    speaking --> ended: hang_up",
        "    ended --> [*]",
    ]


def test_graph_prints_states_then_node_flowchart(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(graph, "_machine", lambda: (FAKE_TABLE, "listening"))
    monkeypatch.setattr(graph, "_floor", lambda: (FAKE_TABLE[:1], "silent"))
    code, out, _ = run_cli(capsys, "graph", "--only", "all", "flows/support_line.yaml")
    assert code == 0
    states, floor, nodes = out.split("\n\n")
    assert states == graph.render_states(FAKE_TABLE, "listening")
    assert floor == graph.render_states(FAKE_TABLE[:1], "silent")
    lines = nodes.splitlines()
    assert lines[0] == "flowchart TD"
    expected = [
        '    start --> n0_menu',
        '    n0_menu -->|"DTMF 1"| n1_billing',
        '    n0_menu -->|"goto"| n2_tech',
        '    n3_operator --> n3_operator_transfer[/"transfer +15550100"/]',
        '    n4_wrap_up --> n4_wrap_up_hangup((("hang up")))',
    ]
    assert [line for line in expected if line not in lines] == []


def test_graph_labels_tool_routes_by_field_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "graph", "--only", "nodes", "flows/appointment.yaml")
    assert code == 0
    lines = out.splitlines()
    assert '    n0_collect_date -->|"check_availability: available = true"| n1_confirm' in lines
    assert '    n0_collect_date -->|"check_availability: available = false"| n0_collect_date' in lines
    assert "stateDiagram-v2" not in out


def test_graph_of_a_broken_flow_prints_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "graph", "--only", "nodes", "tests/flows_broken/bad_dtmf.yaml")
    assert code == 1 and out == ""
    assert "tests/flows_broken/bad_dtmf.yaml:7:7 nodes.menu.on_dtmf.12" in err


def test_graph_draws_the_real_machine_table(capsys: pytest.CaptureFixture[str]) -> None:
    machine = pytest.importorskip("engine.machine")
    code, out, _ = run_cli(capsys, "graph", "--markdown")
    assert code == 0
    assert out.startswith("```mermaid\nstateDiagram-v2\n    [*] --> listening\n")
    for row in [*machine.AGENT_TABLE, *machine.FLOOR_TABLE]:  # both halves, every row
        source = row["source"] if isinstance(row["source"], list) else [row["source"]]
        assert f"    {source[0]} --> {row['dest']}: {row['trigger']}" in out
    assert "    ended --> [*]" in out
    assert "    closing --> ended: end" in out
    assert "    speaking --> interrupted: barge_in [barge_in_confirmed]" in out
    assert "stateDiagram-v2\n    [*] --> silent\n" in out
