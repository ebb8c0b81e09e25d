"""engine/flowload.py: every problem of a flow file, at file:line:column, in words a flow author reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callstate.flows import FlowError, check_flow, check_text, load_flow

ROOT = Path(__file__).resolve().parent.parent
BROKEN = Path("tests/flows_broken")

# file -> its exact error lines, each written after "tests/flows_broken/<file>"
EXPECTED: dict[str, list[str]] = {
    "unknown_top_key.yaml": [":2:1 greting: unknown key 'greting' (did you mean 'greeting'?)"],
    "turn_taking_typo.yaml": [
        ":3:3 turn_taking.endpointng: unknown key 'endpointng' (did you mean 'endpointing'?)",
        ":6:5 turn_taking.barge_in.min_speach_ms: unknown key 'min_speach_ms' "
        "(did you mean 'min_speech_ms'?)",
    ],
    "negative_timeout.yaml": [":7:7 tools.lookup.webhook.timeout_ms: must be > 0"],
    "bad_provider.yaml": [
        ":3:3 llm.provider: must be one of: groq, local",
        ":5:3 tts.provider: must be one of: deepgram, playht, local, local-tts",
    ],
    "missing_name.yaml": [":2:1 name: required"],  # blamed on the mapping that lacks it (line 1 is a comment)
    "tool_both.yaml": [":3:3 tools.lookup: a tool takes one of `webhook` or `function`, not both"],
    "tool_neither.yaml": [":3:3 tools.lookup: a tool needs a `webhook` or a `function`"],
    "bad_function.yaml": [
        ":5:5 tools.lookup.function: must look like module:function (e.g. myapp.tools:lookup)",
    ],
    "bad_url.yaml": [":5:15 tools.lookup.webhook.url: must be an http:// or https:// URL"],
    "missing_target.yaml": [
        ":9:50 nodes.menu.on_tool.check.default: no node named 'helpdesk' (nodes: menu, billing)",
        ":10:15 nodes.menu.on_dtmf.1: no node named 'biling' (did you mean 'billing'?)",
        ":11:21 nodes.menu.goto[1]: no node named 'nowhere' (nodes: menu, billing)",
    ],
    "start_node_missing.yaml": [":2:1 start_node: no node named 'welcome' (did you mean 'welcom'?)"],
    "start_node_omitted.yaml": [":2:1 start_node: required when `nodes` are given"],
    "bad_dtmf.yaml": [
        ":7:7 nodes.menu.on_dtmf.12: must be one DTMF key: 0-9, * or #",
        ":8:7 nodes.menu.on_dtmf.a: must be one DTMF key: 0-9, * or #",
    ],
    "goto_reserved.yaml": [":3:3 tools.goto: 'goto' is reserved: it is the built-in tool that moves nodes"],
    "missing_env.yaml": [
        ":7:7 tools.lookup.webhook.url: environment variable CALLSTATE_TEST_UNSET_URL is not set",
    ],
    "syntax_error.yaml": [
        ":4:1 YAML syntax error: found unexpected end of stream (while scanning a quoted scalar at 2:11)",
    ],
    "top_level_list.yaml": [":1:1 the top level must be a mapping (name: ..., greeting: ...), not a list"],
    "wrong_type.yaml": [
        ":3:3 llm.max_tokens: must be an integer",
        ":6:5 turn_taking.endpointing.on_number_ms: must be an integer",
        ":8:5 turn_taking.filler.enabled: must be true or false",
        ":9:1 fillers: must be a list",
    ],
    "duplicate_key.yaml": [":3:1 greeting: duplicate key 'greeting'"],
    "empty.yaml": [": empty file (a flow needs at least `name`)"],
    "many_errors.yaml": [
        ":3:3 llm.provider: must be one of: groq, local",
        ":4:3 llm.temperature: must be <= 2",
        ":6:3 stt.endpointing: unknown key 'endpointing' (did you mean 'endpointing_ms'?)",
        ":12:7 tools.lookup.webhook.timeout_ms: must be > 0",
        ":13:3 tools.goto: 'goto' is reserved: it is the built-in tool that moves nodes",
        ":19:21 nodes.menu.tools[1]: no tool named 'lookupp' (did you mean 'lookup'?)",
        ":20:15 nodes.menu.on_dtmf.9: no node named 'mneu' (did you mean 'menu'?)",
    ],
}

SECRET = "s3cr3t-token-value"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # so error lines read "tests/flows_broken/x.yaml:..." as a user would type it
    monkeypatch.setenv("CALLSTATE_TEST_SECRET", SECRET)
    monkeypatch.delenv("CALLSTATE_TEST_UNSET_URL", raising=False)


def test_every_broken_flow_has_its_expected_errors_listed() -> None:
    assert sorted(p.name for p in (ROOT / BROKEN).glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_flow_gives_exact_error_lines(name: str) -> None:
    path = BROKEN / name
    expected = [f"{path}{line}" for line in EXPECTED[name]]
    assert check_flow(path).errors == expected
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.errors == expected
    assert str(caught.value) == "\n".join(expected)


def test_missing_env_var_is_named_and_no_env_value_is_printed() -> None:
    report = check_flow(BROKEN / "missing_env.yaml")
    text = "\n".join(report.errors + report.warnings)
    assert "CALLSTATE_TEST_UNSET_URL" in text
    assert SECRET not in text


def test_a_bad_value_from_the_environment_is_reported_without_quoting_it() -> None:
    report = check_text("name: x\ntools:\n  t:\n    description: d\n    webhook: {url: '${HOOK}'}\n",
                        "f.yaml", env={"HOOK": "ftp://user:pw@internal"})
    assert report.errors == ["f.yaml:5:15 tools.t.webhook.url: must be an http:// or https:// URL"]


def test_a_node_name_from_the_environment_is_masked_in_messages() -> None:
    report = check_text("name: x\nstart_node: ${START}\nnodes:\n  menu: {end: Bye.}\n", "f.yaml",
                        env={"START": "prod-menu-7f3a"})
    assert report.errors == ["f.yaml:2:1 start_node: no node named '***' (nodes: menu)"]


def test_env_substitution_defaults_and_escapes() -> None:
    text = ("name: ${NAME}\ngreeting: '${EMPTY:-fallback} ${UNSET:-http://127.0.0.1:8089/x} $${LITERAL}'\n"
            "system: cost $5 {not a ref}\n")
    flow = check_text(text, env={"NAME": "from-env", "EMPTY": ""}).flow
    assert flow is not None
    assert flow.name == "from-env"
    assert flow.greeting == "fallback http://127.0.0.1:8089/x ${LITERAL}"
    assert flow.system == "cost $5 {not a ref}"


@pytest.mark.parametrize("ref", ["${}", "${1ABC}", "${OPEN"])
def test_malformed_env_reference_is_an_error(ref: str) -> None:
    report = check_text(f"name: x\ngreeting: '{ref}'\n", "f.yaml", env={})
    assert report.errors == ["f.yaml:2:1 greeting: bad ${...}: write ${NAME} or ${NAME:-default}, "
                             "and $${ for a literal ${"]


def test_dict_keys_are_the_yaml_source_text() -> None:
    flow = check_text("name: x\ntools: {t: {description: d, function: 'm:f'}}\nstart_node: a\nnodes:\n"
                      "  a:\n    tools: [t]\n    on_tool: {t: {field: ok, cases: {true: b, 3: a}}}\n"
                      "    on_dtmf: {1: b, 0: a}\n  b: {end: Bye.}\n").flow
    assert flow is not None
    assert flow.nodes["a"].on_dtmf == {"1": "b", "0": "a"}
    route = flow.nodes["a"].on_tool["t"]
    assert not isinstance(route, str)
    assert route.cases == {"true": "b", "3": "a"}  # as json.dumps() writes the result's true and 3


def test_plain_scalars_keep_their_text_where_a_string_is_expected() -> None:
    flow = check_text("name: x\ngreeting: 007\nstart_node: op\nnodes:\n  op: {transfer: {to: +15550100}}\n"
                      "stt: {keyterms: [2024, yes]}\n").flow
    assert flow is not None
    assert flow.greeting == "007"
    assert flow.nodes["op"].transfer is not None and flow.nodes["op"].transfer.to == "+15550100"
    assert flow.stt.keyterms == ["2024", "yes"]


def test_anchors_and_merge_keys_work() -> None:
    flow = check_text("name: x\ntools:\n  a: &tool {description: A, function: 'm:a'}\n"
                      "  b: {<<: *tool, description: B}\n").flow
    assert flow is not None
    assert flow.tools["b"].description == "B"
    assert flow.tools["b"].function == "m:a"


def test_unreachable_and_dead_end_nodes_are_warnings_not_errors() -> None:
    report = check_text("name: x\nstart_node: a\nnodes:\n  a: {goto: [b]}\n  b: {say: Hi.}\n"
                        "  c: {end: Bye.}\n", "f.yaml")
    assert report.errors == []
    assert report.flow is not None
    assert report.warnings == [
        "f.yaml:5:3 nodes.b: dead end: no transitions, no tools and no `end` or `transfer`",
        "f.yaml:6:3 nodes.c: unreachable from start_node 'a'",
    ]


def test_route_on_a_tool_the_node_does_not_offer_is_an_error() -> None:
    report = check_text("name: x\ntools: {t: {description: d, function: 'm:f'}}\nstart_node: a\n"
                        "nodes:\n  a: {on_tool: {t: a}, end: Bye.}\n", "f.yaml")
    assert report.errors == ["f.yaml:5:17 nodes.a.on_tool.t: 't' is not in this node's `tools`, "
                             "so this route never fires"]


def test_route_cases_need_a_field_and_end_excludes_transfer() -> None:
    report = check_text("name: x\ntools: {t: {description: d, function: 'm:f'}}\nstart_node: a\nnodes:\n"
                        "  a:\n    tools: [t]\n    on_tool: {t: {cases: {x: a}}}\n    end: Bye.\n"
                        "    transfer: {to: '+1555'}\n", "f.yaml")
    assert report.errors == [
        "f.yaml:7:19 nodes.a.on_tool.t.cases: needs `field`: the result field the cases are values of",
        "f.yaml:9:5 nodes.a.transfer: a node either ends the call (`end`) or transfers it, not both",
    ]


def test_union_value_of_neither_shape_gets_one_message() -> None:
    report = check_text("name: x\ntools: {t: {description: d, function: 'm:f'}}\nstart_node: a\nnodes:\n"
                        "  a: {tools: [t], on_tool: {t: [a]}, end: Bye.}\n", "f.yaml")
    assert report.errors == ["f.yaml:5:29 nodes.a.on_tool.t: must be a string or a mapping"]


def test_local_reply_must_call_a_defined_tool() -> None:
    report = check_text("name: x\nlocal:\n  replies:\n    - {tool: lookup}\n    - {tool: goto}\n", "f.yaml")
    assert report.errors == ["f.yaml:4:8 local.replies[0].tool: no tool named 'lookup'"]


def test_turn_taking_numbers_and_patterns_are_checked() -> None:
    report = check_text("name: x\nturn_taking:\n  idle: {reprompt_ms: -1}\n  endpointing:\n"
                        "    rules: [{pattern: '(', wait_ms: 100}]\n", "f.yaml")
    assert report.errors == [
        "f.yaml:3:10 turn_taking.idle.reprompt_ms: must be >= 0",
        "f.yaml:5:14 turn_taking.endpointing.rules[0].pattern: not a valid regular expression "
        "(missing ), unterminated subpattern at position 0)",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    report = check_text("name: x\nllm: {zzz: 1}\n", "f.yaml")
    assert report.errors == ["f.yaml:2:7 llm.zzz: unknown key 'zzz' (allowed: provider, model, temperature, "
                             "max_tokens, reasoning_effort)"]


@pytest.mark.parametrize(("text", "error"), [
    ("hello\n", "f.yaml:1:1 the top level must be a mapping (name: ..., greeting: ...), not a single value"),
    ("a: b\n---\nc: d\n", "f.yaml:2:1 YAML syntax error: expected a single document in the stream, "
                          "but found another document"),
    ("name: x\n[a]: 1\n", "f.yaml:2:1 keys must be plain strings"),
    ("name: !custom x\n", "f.yaml:1:1 name: unsupported YAML tag !custom"),
    ("[" * 5000 + "]" * 5000, "f.yaml: nested too deeply"),
    ("name: !!int x\n", "f.yaml:1:1 name: unsupported YAML tag !!int"),
    ("name: x\nfillers: &a [*a]\n",
     "f.yaml:2:10 fillers[0]: a recursive alias (`*name` inside its own anchor)"),
])
def test_odd_yaml_gives_one_clear_line(text: str, error: str) -> None:
    assert check_text(text, "f.yaml").errors == [error]


def test_alias_bomb_is_refused_without_expanding_it() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    errors = check_text("\n".join(lines) + "\n", "bomb.yaml").errors
    assert errors == ["bomb.yaml: too large: over 100000 YAML nodes once aliases are expanded "
                      "(a flow is a few hundred)"]


def test_unreadable_files_give_one_line(tmp_path: Path) -> None:
    assert check_flow(tmp_path / "nope.yaml").errors == [f"{tmp_path / 'nope.yaml'}: cannot read "
                                                         "(No such file or directory)"]
    assert check_flow(tmp_path).errors == [f"{tmp_path}: cannot read (Is a directory)"]
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert check_flow(tmp_path / "latin1.yaml").errors == [f"{tmp_path / 'latin1.yaml'}: not UTF-8 text"]
    with pytest.raises(FlowError):
        load_flow(tmp_path / "nope.yaml")


def test_the_logged_flow_masks_env_values_and_follows_a_provider_change() -> None:
    from callstate.providers import with_provider

    secret = "Bearer s3cret-from-env"
    text = ("name: x\ntools:\n  t:\n    description: d\n    webhook:\n      url: http://127.0.0.1:1/t\n"
            "      headers: {Authorization: '${AUTH}'}\n")
    flow = check_text(text, env={"AUTH": secret}).flow
    assert flow is not None and flow.tools["t"].webhook is not None
    assert flow.tools["t"].webhook.headers["Authorization"] == secret
    changed = with_provider(flow, "stt", "local-asr")
    for f in (flow, changed):
        record = f.log_record()
        assert secret not in json.dumps(record)
        assert record["tools"]["t"]["webhook"]["headers"]["Authorization"] == "${AUTH}"
        assert f.env_paths() == ["tools.t.webhook.headers.Authorization"]
    assert changed.log_record()["stt"]["provider"] == "local-asr"  # logged as it runs, not as it was loaded
