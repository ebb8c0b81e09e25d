"""Loading flows from YAML, with every error as ``file:line:column key.path: message``.

Rules:
- Parse with ``yaml.compose`` (nodes keep their marks), build plain data ourselves, validate with pydantic,
  then run the semantic checks; every problem of a file is reported at once, sorted by position.
- Mapping keys are the YAML source text: ``1: billing`` and ``true: confirm`` give the keys "1" and
  "true" (YAML 1.1 would give an int and a bool), which is what a DTMF digit or a JSON result reads as.
- A plain scalar where a string is expected (``to: +15550100``, ``voice: 2024``) is taken as its source
  text; quoting is never needed to keep a leading "+" or zeros.
- ``${VAR}`` and ``${VAR:-default}`` in string values come from the environment; ``$${`` is a literal
  ``${``. Messages quote names, never values, and anything the environment supplied shows as ``***``.
- Providers (``stt``, ``llm``, ``tts``) are opaque to the core: a ProviderTable (callstate/providers.py's
  REGISTRY, handed in by the caller) says which names exist and what options each takes; without one,
  any provider config is taken as written.
- Bad input never raises anything but FlowError.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ValidationError

from engine.flow import Flow
from engine.flowcheck import Checks
from engine.flowerrors import Loc, collapse, format_path, walk
from engine.textfile import TextFileError, read_text

M = typing.TypeVar("M", bound=BaseModel)

_MERGE = "tag:yaml.org,2002:merge"
_TEXT_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool")}
_TIMESTAMP, _NULL = "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:null"
_MAX_NODES = 100_000  # alias bombs: a flow is a few hundred nodes
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"([A-Za-z_]\w*)(?::-(.*))?", re.S)
class ProviderTable(Protocol):
    """The provider registry, as the loader sees it (it lives beside the adapters; engine/ can't import it)."""

    kinds: tuple[str, ...]

    def names(self, kind: str) -> list[str]: ...
    #: The model of a whole config (``provider`` included) of that name; None when no such provider exists.
    def options(self, kind: str, name: str | None) -> type[BaseModel] | None: ...
    def default_options(self, kind: str) -> type[BaseModel]: ...


class FlowError(ValueError):
    """A flow file that can't be used; ``errors`` holds one formatted line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Report:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flow: Flow | None = None
    #: The validated document when it is not a flow (check_document), None on errors.
    value: Any = None
    #: every value the environment supplied (to mask wherever the flow is shown or stored)
    env_values: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def load_flow(path: str | os.PathLike[str], providers: ProviderTable | None = None) -> Flow:
    report = check_flow(path, providers=providers)
    if report.flow is None:
        raise FlowError(report.errors)
    return report.flow


def check_flow(path: str | os.PathLike[str], env: Mapping[str, str] | None = None,
               providers: ProviderTable | None = None) -> Report:
    name = str(path)
    try:
        text = read_text(path)
    except TextFileError as exc:
        return Report(name, [str(exc)])
    return check_text(text, name, env, providers)


def check_text(text: str, name: str = "<flow>", env: Mapping[str, str] | None = None,
               providers: ProviderTable | None = None) -> Report:
    try:
        return _Loader(name, os.environ if env is None else env, providers).run(text)
    except RecursionError:  # PyYAML's composer and pydantic both recurse per level of nesting
        return Report(name, [f"{name}: nested too deeply"])


#: Checks beyond the model's own, on the built data: check(data, error, warn) with error(path, message).
Check = typing.Callable[[dict[str, Any], Any, Any], None]


def check_document(text: str, name: str, model: type[BaseModel], check: Check | None = None,
                   env: Mapping[str, str] | None = None) -> Report:
    """Any YAML document validated as ``model`` with a flow's treatment: every error at once, as
    file:line:column key.path, unknown keys with did-you-mean, ${VAR} from the environment. Used for call
    scripts; the result is in ``Report.value``."""
    try:
        return _Loader(name, os.environ if env is None else env, None).run(text, model, check)
    except RecursionError:
        return Report(name, [f"{name}: nested too deeply"])


def dump_flow(flow: Flow) -> str:
    """YAML that loads back to an equal flow (non-default fields only; ``${`` escaped)."""

    def escape(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("${", "$${")
        if isinstance(v, dict):
            return {k: escape(x) for k, x in v.items()}
        return [escape(x) for x in v] if isinstance(v, list) else v

    data = escape(flow.model_dump(mode="json", exclude_defaults=True))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------ the loader


@dataclass(frozen=True, order=True)
class _Issue:
    line: int
    column: int
    path: str
    message: str
    loc: Loc = field(default=(), compare=False)
    primary: bool = field(default=False, compare=False)  # about the source text itself, not its meaning


class _TooBig(Exception):
    pass


class _Loader:
    def __init__(self, name: str, env: Mapping[str, str], providers: ProviderTable | None) -> None:
        self.name, self.env, self.providers = name, env, providers
        self.errors: list[_Issue] = []
        self.warnings: list[_Issue] = []
        self.unbuilt: set[Loc] = set()  # values kept as written (a failed ${VAR}, a bad tag)
        self.secrets: dict[Loc, list[str]] = {}  # what the environment put where, to keep it out of messages
        self.sources: dict[Loc, str] = {}  # the text as written (with its ${VAR}) where the environment put a value
        self.root: yaml.Node | None = None
        self.ctor = yaml.constructor.SafeConstructor()
        self.count = 0
        self.built: set[int] = set()

    def run(self, text: str, model: type[BaseModel] = Flow, check: Check | None = None) -> Report:
        report = Report(self.name)
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            m, cm = exc.problem_mark or exc.context_mark, exc.context_mark
            problem, context = exc.problem, exc.context
            where = f"{self.name}:{m.line + 1}:{m.column + 1}" if m else self.name
            if problem and problem.startswith("but ") and context:  # PyYAML splits "expected X, but found Y"
                problem, context = f"{context}, {problem}", None
            if problem and context and cm:
                problem += f" ({context} at {cm.line + 1}:{cm.column + 1})"
            return Report(self.name, [f"{where} YAML syntax error: {problem or context}"])
        except yaml.YAMLError as exc:
            return Report(self.name, [f"{self.name}: YAML error: {exc}"])
        if self.root is None or (isinstance(self.root, yaml.ScalarNode) and self.root.value == ""):
            need = "a flow needs at least `name`" if model is Flow else "expected a mapping"
            return Report(self.name, [f"{self.name}: empty file ({need})"])
        if not isinstance(self.root, yaml.MappingNode):
            kind = "a list" if isinstance(self.root, yaml.SequenceNode) else "a single value"
            m = self.root.start_mark
            example = "name: ..., greeting: ..." if model is Flow else "key: value, ..."
            return Report(self.name, [f"{self.name}:{m.line + 1}:{m.column + 1} the top level must be a "
                                      f"mapping ({example}), not {kind}"])
        try:
            data = self.build(self.root, (), frozenset())
        except _TooBig:
            expanded = " once aliases are expanded" if len(self.built) < self.count else ""
            return Report(self.name, [f"{self.name}: too large: over {_MAX_NODES} YAML nodes{expanded} "
                                      "(a flow is a few hundred)"])
        if model is Flow:
            self.check_providers(data)  # first: it turns plain scalars into text where an option wants a string
        value = self.validate(model, data)
        if model is Flow:
            Checks(data, self.error, self.warn).run()
        if check is not None and isinstance(data, dict):
            check(data, self.error, self.warn)
        # a value that couldn't be built stays as written: only the error that says why is worth showing
        errors = [i for i in self.errors if i.primary or i.loc not in self.unbuilt]
        report.errors = list(dict.fromkeys(self.format(i) for i in sorted(errors)))
        report.warnings = list(dict.fromkeys(self.format(i) for i in sorted(self.warnings)))
        if not report.errors:
            report.value = value
            report.flow = value if isinstance(value, Flow) else None
        report.env_values = [v for values in self.secrets.values() for v in values if v]
        if report.flow is not None:
            report.flow.set_env_sources(self.sources, tuple(report.env_values))
        return report

    def format(self, i: _Issue) -> str:
        message = i.message
        for secret in sorted(self.secrets.get(i.loc, ()), key=len, reverse=True):
            message = message.replace(secret, "***") if secret else message  # e.g. "no node named '***'"
        return f"{self.name}:{i.line}:{i.column} " + (f"{i.path}: {message}" if i.path else message)

    # ----------------------------------------------------------------------------- building data

    def pairs(self, node: yaml.MappingNode, blame: Loc | None = None,
              seen: frozenset[int] = frozenset()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key text -> (key node, value node), ``<<`` merges included; problems go to ``blame``, if given."""
        own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                for src in vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]:
                    if isinstance(src, yaml.MappingNode) and id(src) not in seen:
                        for k, pair in self.pairs(src, None, seen | {id(node)}).items():
                            merged.setdefault(k, pair)  # the earlier source wins, as YAML's merge says
                    elif blame is not None:
                        self.error(blame, "`<<` must merge a mapping", node=knode)
            elif not isinstance(knode, yaml.ScalarNode):
                if blame is not None:
                    self.error(blame, "keys must be plain strings", node=knode)
            else:
                if knode.value in own and blame is not None:
                    self.error((*blame, knode.value), f"duplicate key '{knode.value}'", node=knode)
                own[knode.value] = (knode, vnode)
        return {**merged, **own}

    def build(self, node: yaml.Node, path: Loc, stack: frozenset[int]) -> Any:
        self.count += 1
        self.built.add(id(node))  # fewer ids than builds: aliases were expanded
        if self.count > _MAX_NODES:
            raise _TooBig
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _TIMESTAMP:  # a date is text to every field (and must stay JSON in `parameters`)
                return node.value
            try:
                value = self.ctor.construct_object(node)
                ok = isinstance(value, str | int | float | bool) or node.tag == _NULL
            except Exception:  # PyYAML raises whatever int(), float() or a dict lookup raised: `!!int x`
                ok = False
            if not ok:
                self.fail(path, "unsupported YAML tag " + node.tag.replace("tag:yaml.org,2002:", "!!"))
                return node.value
            return self.expand(value, path) if isinstance(value, str) and "${" in value else value
        if id(node) in stack:
            self.fail(path, "a recursive alias (`*name` inside its own anchor)")
            return None
        inner = stack | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self.build(n, (*path, i), inner) for i, n in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        return {k: self.build(v, (*path, k), inner) for k, (_, v) in self.pairs(node, path).items()}

    def expand(self, text: str, path: Loc) -> str:
        """``${VAR}`` / ``${VAR:-default}`` from the environment; ``$${`` is a literal ``${``."""
        problems: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            ref = _VAR.fullmatch(m.group(1) or "")
            if m.group(1) is None or ref is None:
                problems.append("bad ${...}: write ${NAME} or ${NAME:-default}, and $${ for a literal ${")
                return m.group(0)
            value = self.env.get(ref.group(1))
            if ref.group(2) is not None and not value:
                return ref.group(2)  # `:-`: unset or empty takes the default, as in sh
            if value is None:
                problems.append(f"environment variable {ref.group(1)} is not set")
                return m.group(0)
            self.secrets.setdefault(path, []).append(value)
            self.sources[path] = text
            return value

        result = _REF.sub(sub, text)
        for problem in dict.fromkeys(problems):
            self.fail(path, problem)
        return text if problems else result

    # ------------------------------------------------------------------------------------ pydantic

    def validate(self, model: type[M], data: dict[str, Any], at: Loc = ()) -> M | None:
        """Validate ``data`` (found at ``at`` in the file) as ``model``; errors go to their positions."""
        for _ in range(4):  # each pass turns plain scalars into their text where a string was wanted
            try:
                return model.model_validate(data)
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
            if not any([self.as_text(data, e, model, at) for e in errors if e["type"] == "string_type"]):
                break
        for path, message in collapse(errors, model):
            self.error((*at, *path), message)
        return None

    def check_providers(self, data: dict[str, Any]) -> None:
        """Each provider config against the table: a known name, and the options that provider takes (an
        unknown name's options are checked as the default provider's, so one run reports everything)."""
        if self.providers is None:
            return
        for kind in self.providers.kinds:
            config = data.get(kind)
            if not isinstance(config, dict):
                continue  # not a mapping: Flow's own validation says so
            name = config.get("provider")
            model = self.providers.options(kind, name if isinstance(name, str) or name is None else str(name))
            if model is None:
                known = self.providers.names(kind)
                close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.error((kind, "provider"), "must be one of: " + ", ".join(known) + hint)
                model = self.providers.default_options(kind)
            self.validate(model, config, (kind,))  # plain scalars made text here stay so in the flow

    def as_text(self, data: Any, err: Mapping[str, Any], model: type[BaseModel], at: Loc) -> bool:
        path = walk(err["loc"], model)[0]
        node, _ = self.locate((*at, *path))
        if not (path and isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in _TEXT_TAGS):
            return False
        for step in path[:-1]:
            data = data[step]
        data[path[-1]] = node.value
        return True

    # ----------------------------------------------------------------------------------- positions

    def locate(self, path: Loc) -> tuple[yaml.Node | None, yaml.Mark]:
        """The node at ``path`` (None if absent) and where to point: its key, its list item, or the
        nearest parent that exists (a missing key is blamed on the mapping that lacks it)."""
        node = self.root
        assert node is not None
        mark = node.start_mark
        for step in path:
            if isinstance(node, yaml.MappingNode) and isinstance(step, str):
                pair = self.pairs(node).get(step)
                if pair is None:
                    return None, mark
                mark, node = pair[0].start_mark, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                node = node.value[step]
                mark = node.start_mark
            else:
                return None, mark
        return node, mark

    def error(self, path: Loc, message: str, at: Loc | None = None, node: yaml.Node | None = None) -> None:
        m = node.start_mark if node is not None else self.locate(path if at is None else at)[1]
        self.errors.append(_Issue(m.line + 1, m.column + 1, format_path(path), message, path))

    def fail(self, path: Loc, message: str) -> None:
        self.unbuilt.add(path)
        m = self.locate(path)[1]
        self.errors.append(_Issue(m.line + 1, m.column + 1, format_path(path), message, path, primary=True))

    def warn(self, path: Loc, message: str) -> None:
        m = self.locate(path)[1]
        self.warnings.append(_Issue(m.line + 1, m.column + 1, format_path(path), message, path))
