"""Our kinds validated by the CRDs in crds/, the one definition of what they accept.

Each CRD's openAPIV3Schema becomes a JSON Schema validator (types, required,
enums, patterns, bounds, the formats Kubernetes checks), closed as `kubectl
apply`'s strict field validation treats it: a field the schema does not
declare is an error unless the schema preserves unknown fields there, so a
typo such as `sever:` does not silently fall back to a default. The CEL
rules (`x-kubernetes-validations`) are compiled once and evaluated with
cel-python, each reporting its own `message` at its node, as the API server
does (not `messageExpression` or `fieldPath`, which Kubernetes 1.25 lacks).

In a cluster the API server has already enforced all of this; for objects
read from manifests (`certctl serve`) nothing else has. Either way the
parsers in api/parsing.py call `validate` first and then only read values
into typed models. The first problem found is reported, as in api/parsing.py:
unknown fields first (a typo explains a missing required field), then wrong
types, missing fields, formats and the other structural checks, then the CEL
rules, a node's rules after its children's (the more specific first).

The CRD files ship in the package through `crds`, a link to the project's
crds/ folder (pyproject.toml's package data), so the installed package reads
the same files `kubectl apply -k crds/` does.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import datetime
import difflib
import fractions
import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import celpy
import jsonschema
import yaml
from celpy import adapter, celtypes, evaluation

from certctl.api import cel_parser, conditions, errors

CRDS: Final = Path(__file__).with_name("crds")
_UNNAMED: Final = "<unnamed>"
_DEFAULT_NAMESPACE: Final = "default"

# --- values and formats ---------------------------------------------------------------


def describe_value(value: Any) -> str:
    """A value's YAML type for error messages ("a number", "null", "a mapping", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


_DURATION_UNITS_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts both micro signs
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a Go duration (`2160h`, `1h30m`, `1.5h`, `90s`) as cert-manager does.

    Go's grammar: an optional sign, then one or more decimal numbers each with
    a unit (h, m, s, ms, us/µs, ns); "0" alone needs no unit. Days are not a
    unit in Go, so `90d` is refused with a hint. Sub-microsecond parts are
    truncated, as `timedelta` cannot hold nanoseconds. This is the CRDs'
    `format: duration` here (Kubernetes' own check of it is looser: their
    `pattern` holds the Go grammar for the API server).
    """
    hint = "use a number with a unit such as '2160h', '1h30m' or '45s' (units: h, m, s, ms, us, ns)"
    rest = text.strip()
    sign = -1 if rest.startswith("-") else 1
    rest = rest[1:] if rest[:1] in ("-", "+") else rest
    if rest == "0":
        return datetime.timedelta(0)
    if not rest:
        raise ValueError(f"{text!r} is not a duration: {hint}")
    total = fractions.Fraction(0)
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None or not (match.group(1) or match.group(2)):
            if rest.endswith("d") and rest[:-1].isdigit():
                raise ValueError(
                    f"{text!r} is not a duration: days are not a unit, write {int(rest[:-1]) * 24}h"
                )
            raise ValueError(f"{text!r} is not a duration: {hint}")
        whole, fraction, unit = match.group(1), match.group(2), match.group(3)
        value = fractions.Fraction(int(whole or "0"))
        if fraction:
            value += fractions.Fraction(int(fraction), 10 ** len(fraction))
        total += value * _DURATION_UNITS_NS[unit]
        position = match.end()
    microseconds = int(total) // 1_000
    return datetime.timedelta(microseconds=sign * microseconds)


# The formats our CRDs use, checked as the API server checks them (others are not).
_FORMATS: Final = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("byte", raises=ValueError)
def _is_base64(value: object) -> bool:
    """Standard base64; line breaks are skipped, as Go's decoder does."""
    if isinstance(value, str):
        try:
            base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
        except binascii.Error:
            raise ValueError("is not valid base64; encode the file with `base64 -w0`") from None
    return True


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if isinstance(value, str):
        conditions.parse_time(value)
    return True


@_FORMATS.checks("duration", raises=ValueError)
def _is_duration(value: object) -> bool:
    if isinstance(value, str):
        parse_duration(value)
    return True


# --- the compiled CRDs ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    """One thing wrong with an object: the dotted field path and what to change."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    """One x-kubernetes-validations entry (compiled on its first evaluation: `_program`).

    `fields`: the fields of `self` the rule reads, when it reads `self` only as
    `self.<field>`; its outcome then depends on those alone, which is what its
    outcomes are remembered by (10,000 Certificates from Ingresses differ in their
    names, not in the fields most rules look at). None: it reads `self` whole.
    `sized`: those of them it reads only as has(self.<field>) or size(self.<field>)
    (`_sized_fields`)."""

    text: str
    message: str
    fields: tuple[str, ...] | None
    sized: frozenset[str] = frozenset()


_SELF: Final = re.compile(r"\bself\b")
_SELF_FIELD: Final = re.compile(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


_SIZED_USE: Final = re.compile(r"\b(?:has|size)\(\s*self\.([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def _fields_read(rule: str) -> tuple[str, ...] | None:
    fields = _SELF_FIELD.findall(rule)
    if len(fields) != len(_SELF.findall(rule)):
        return None  # `self` itself, or a method of it (`self.all(...)`)
    return tuple(sorted(set(fields)))


def _rule(*, text: str, message: str) -> _Rule:
    fields = _fields_read(text)
    return _Rule(text=text, message=message, fields=fields, sized=_sized_fields(text, fields))


def _sized_fields(rule: str, fields: tuple[str, ...] | None) -> frozenset[str]:
    """The fields `rule` reads only as has(self.<field>) or size(self.<field>): its outcome
    depends on whether they are set and how long they are, not on what they hold. The
    Certificate's "at least one name" rule is one: remembered by the names themselves it
    was evaluated for every Certificate (1.3 ms each in cel-python, 6 % of B2's CPU)."""
    if fields is None:
        return frozenset()
    read = collections.Counter(_SELF_FIELD.findall(rule))
    sized = collections.Counter(_SIZED_USE.findall(rule))
    return frozenset(name for name in fields if sized[name] == read[name])


def _stand_in(value: Any) -> Any:
    """A value of `value`'s type and size holding nothing of it, for a `sized` field."""
    if isinstance(value, str):
        return "x" * len(value)
    if isinstance(value, list):
        return [0] * len(value)
    if isinstance(value, Mapping):
        return {str(index): 0 for index in range(len(value))}
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _CelNode:
    """The CEL rules of one schema node and of the nodes below it that have any."""

    rules: tuple[_Rule, ...]
    properties: Mapping[str, _CelNode]
    items: _CelNode | None
    additional: _CelNode | None


@dataclasses.dataclass(frozen=True, slots=True)
class KindSchema:
    """A kind's stored version: its structural validator and its CEL rules."""

    kind: str
    namespaced: bool
    validator: jsonschema.Draft7Validator
    cel: _CelNode | None


def _closed(node: Mapping[str, Any], *, root: bool = False) -> dict[str, Any]:
    """The JSON Schema of an openAPIV3Schema node, objects closed to undeclared fields."""
    schema = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in schema:
        schema["properties"] = {name: _closed(child) for name, child in node["properties"].items()}
        if root:
            schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the server's
    if isinstance(node.get("additionalProperties"), Mapping):
        schema["additionalProperties"] = _closed(node["additionalProperties"])
    if "items" in node:
        schema["items"] = _closed(node["items"])
    if (node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def _cel_environment() -> celpy.Environment:
    """Made on the first rule evaluated, not at import: its parser takes a quarter of a
    second to build, which every command (`certctl --version` too) paid before; and
    loaded from this user's cache when there is one (`cel_parser`)."""
    cel_parser.prime()
    return celpy.Environment()


@functools.cache
def _program(rule: str) -> celpy.Runner:
    environment = _cel_environment()
    return environment.program(environment.compile(rule))


def _cel_node(node: Mapping[str, Any]) -> _CelNode | None:
    """The node's compiled rules, None where neither it nor anything below has one."""
    rules = tuple(
        _rule(text=rule["rule"], message=rule["message"])
        for rule in node.get("x-kubernetes-validations", ())
    )
    properties = {name: compiled for name, child in node.get("properties", {}).items()
                  if (compiled := _cel_node(child)) is not None}
    items = _cel_node(node["items"]) if "items" in node else None
    additional = (_cel_node(node["additionalProperties"])
                  if isinstance(node.get("additionalProperties"), Mapping) else None)
    if not (rules or properties or items or additional):
        return None
    return _CelNode(rules=rules, properties=properties, items=items, additional=additional)


# libyaml's loader when PyYAML has it: the CRDs' 100 KB take 17 ms instead of 300.
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)  # noqa: S506 - a safe loader


@functools.cache
def kinds() -> Mapping[str, KindSchema]:
    """Our kinds by name, from the CRDs crds/kustomization.yaml lists: read and compiled once."""
    listed = _load_yaml(CRDS / "kustomization.yaml")
    compiled: dict[str, KindSchema] = {}
    for file in listed["resources"]:
        crd = _load_yaml(CRDS / file)
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        openapi = version["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        compiled[kind] = KindSchema(
            kind=kind,
            namespaced=crd["spec"]["scope"] == "Namespaced",
            validator=jsonschema.Draft7Validator(_closed(openapi, root=True),
                                                 format_checker=_FORMATS),
            cel=_cel_node(openapi),
        )
    return compiled


# --- validating ------------------------------------------------------------------------------


def validate(obj: Mapping[str, Any], *, source: str | None = None) -> None:
    """Raise `errors.InvalidObject` for the first problem the CRD of `obj`'s kind finds.

    `status` is left out: certctl writes it, and a Certificate must stay
    readable whatever an older version wrote there. Fields set to null count
    as unset, as the API server drops them before validating.

    The CEL rules cost milliseconds an object (cel-python interprets them),
    so they run only for objects no API server has stored: manifests read by
    `certctl serve`, and objects built in memory. An object from an API server
    (it carries `metadata.managedFields`, which only the server writes) passed
    the CRD's rules there; it gets the structural check alone (a tenth of a
    millisecond), which keeps this module's readers safe from a cluster whose
    CRDs are older than certctl. Outcomes are remembered by the content's
    digest, as reconcilers read the same objects again and again.
    """
    kind = kinds()[obj["kind"]]
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    cel = not metadata.get("managedFields")
    checked = {key: ({} if key == "metadata" and isinstance(value, Mapping) else value)
               for key, value in obj.items() if key != "status"}
    try:
        content = json.dumps(checked, separators=(",", ":"))
    except TypeError:  # a value JSON has not (a date PyYAML made): checked, not remembered
        found = next(_violations(kind, _without_nulls(checked), cel=cel), None)
    else:
        found = _first_violation(kind.kind, content, cel=cel)
    if found is None:
        return
    name, namespace = metadata.get("name"), metadata.get("namespace")
    raise errors.InvalidObject(
        kind=kind.kind,
        namespace=(namespace if isinstance(namespace, str) and namespace
                   else _DEFAULT_NAMESPACE) if kind.namespaced else None,
        name=name if isinstance(name, str) and name else _UNNAMED,
        field=found.field,
        message=found.message,
        source=source,
    )


def _content_digest(kind: str, content: str) -> bytes:
    return hashlib.sha256(f"{kind}\0{content}".encode()).digest()


class _Outcomes:
    """What the checks found for contents, by the contents' digest: valid (None) or the
    first violation; the most recently seen last and at most `limit`. By digest, not by
    content: an object's JSON, kept for each content checked, was about 2 KB of every
    certificate's memory in `certctl serve`."""

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._found: dict[bytes, Violation | None] = {}

    def get(self, digest: bytes) -> tuple[bool, Violation | None]:
        """Whether `digest` is remembered, and what was found for it."""
        with self._lock:
            if digest not in self._found:
                return False, None
            found = self._found[digest] = self._found.pop(digest)
            return True, found

    def put(self, digest: bytes, found: Violation | None) -> None:
        with self._lock:
            self._found[digest] = found
            while len(self._found) > self._limit:
                del self._found[next(iter(self._found))]

    def valid(self) -> list[bytes]:
        with self._lock:
            return [digest for digest, found in self._found.items() if found is None]


# The contents found valid with every rule (CEL included) are what a later process with
# the same CRDs may take as valid without running the rules again (`valid_digests`,
# `remember_valid`): `certctl serve` keeps them across a restart, whose pass over 10,000
# Certificates spent half its CPU on their rules and meanwhile slowed the data plane's
# handshakes. Contents checked without the rules (objects from an API server) are
# remembered apart (`_structure_only`), so that none of them passes for one checked with them.
_valid = _Outcomes(limit=65536)
_structure_only = _Outcomes(limit=16384)


@functools.cache
def crds_digest() -> bytes:
    """What tells these CRDs (and so these rules) from any others: valid contents are
    only ever handed over between processes whose CRDs have the same digest."""
    hashed = hashlib.sha256()
    for file in _load_yaml(CRDS / "kustomization.yaml")["resources"]:
        data = (CRDS / file).read_bytes()
        hashed.update(len(data).to_bytes(8, "big"))
        hashed.update(data)
    return hashed.digest()


def valid_digests() -> list[bytes]:
    """The contents this process found valid (or was handed as valid), least recent first."""
    return _valid.valid()


def remember_valid(digests: list[bytes]) -> None:
    """Take contents an earlier process with the same CRDs (`crds_digest`) found valid."""
    for digest in digests:
        _valid.put(digest, None)


def _first_violation(kind: str, content: str, *, cel: bool) -> Violation | None:
    """The first problem in `content` (an object's JSON without its status), remembered by
    digest: reconcilers read the same objects again and again. Bounded, so that edited
    objects' old contents go; large enough for every object of a big cluster."""
    outcomes = _valid if cel else _structure_only
    digest = _content_digest(kind, content)
    known, found = outcomes.get(digest)
    if not known:
        found = next(_violations(kinds()[kind], _without_nulls(json.loads(content)), cel=cel),
                     None)
        outcomes.put(digest, found)
    return found


def violations(obj: Mapping[str, Any]) -> list[Violation]:
    """Everything the CRD of `obj`'s kind finds, status included, in the order `validate` uses."""
    return list(_violations(kinds()[obj["kind"]], _without_nulls(obj), cel=True))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _violations(kind: KindSchema, obj: Mapping[str, Any], *, cel: bool) -> Iterator[Violation]:
    """Structural problems (all found, then ranked), then the CEL rules' (found lazily)."""
    structural = sorted(
        ((_RANK.get(str(error.validator), len(_RANK)), index, violation)
         for index, error in enumerate(kind.validator.iter_errors(obj))
         for violation in _structural(error)),
        key=lambda ranked: ranked[:2],
    )
    yield from (violation for _, _, violation in structural)
    if cel and not structural and kind.cel is not None:
        yield from _cel_violations(kind.cel, obj, at="")


_RANK: Final = {"additionalProperties": 0, "type": 1, "required": 2, "format": 3}


def _path(parts: Iterator[str | int] | tuple[str | int, ...], *, at: str = "") -> str:
    for part in parts:
        at = f"{at}[{part}]" if isinstance(part, int) else f"{at}.{part}" if at else part
    return at


def _structural(error: jsonschema.ValidationError) -> Iterator[Violation]:
    """jsonschema's finding in certctl's words: one Violation per field it concerns."""
    at = _path(tuple(error.absolute_path))
    keyword = str(error.validator)
    expected: Any = error.validator_value
    value: Any = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if keyword == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        for key in value:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"expected one of: {', '.join(known)}" if known
                    else f"{at.rpartition('.')[2]} takes no settings: {{}}")
            yield Violation(_path((str(key),), at=at), f"unknown field; {hint}")
    elif keyword == "required":
        for name in expected:
            if name not in value:
                yield Violation(_path((name,), at=at), "is required")
    else:
        yield Violation(at or "(object)", _structural_message(error))


_TYPE_NAMES: Final = {"object": "a mapping", "array": "a list", "string": "a string",
                      "integer": "an integer", "number": "a number", "boolean": "true or false"}


# The bounds: which way, and what is counted (None: the number itself).
_BOUNDS: Final[dict[str, tuple[str, str | None]]] = {
    "minimum": ("at least", None), "maximum": ("at most", None),
    "minLength": ("at least", "characters"), "maxLength": ("at most", "characters"),
    "minItems": ("at least", "items"), "maxItems": ("at most", "items"),
    "minProperties": ("at least", "fields"), "maxProperties": ("at most", "fields"),
}


def _structural_message(error: jsonschema.ValidationError) -> str:
    keyword = str(error.validator)
    expected: Any = error.validator_value
    value: Any = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if keyword == "type":
        hint = "; quote the value" if expected == "string" else ""
        return f"must be {_TYPE_NAMES.get(expected, expected)}, got {describe_value(value)}{hint}"
    if keyword == "enum":
        return f"must be one of {', '.join(str(choice) for choice in expected)}, got {value!r}"
    if keyword in ("minimum", "maximum") and {"minimum", "maximum"} <= schema.keys():
        return f"must be between {schema['minimum']} and {schema['maximum']}, is {value}"
    if keyword == "maxProperties" and expected == 0:
        # How the CRDs declare an object field certctl accepts only when empty (a
        # cert-manager field it does not implement): CEL cannot look into such objects.
        return "must be empty: certctl does not support these settings; remove them"
    if keyword in _BOUNDS:
        bound, unit = _BOUNDS[keyword]
        if unit is None:
            return f"must be {bound} {expected}, is {value}"
        return f"must have {bound} {expected} {unit}, has {len(value)}"
    if keyword == "pattern":
        return f"{value!r} does not match {expected}"
    if keyword == "format" and error.cause is not None:
        return str(error.cause)  # the format checker's explanation
    return error.message  # jsonschema's own words, for keywords the CRDs do not use today


def _cel_violations(node: _CelNode, value: Any, *, at: str) -> Iterator[Violation]:
    """The node's children's rules first (the more specific), then its own."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = node.properties.get(key) or node.additional
            if child is not None:
                yield from _cel_violations(child, item, at=_path((str(key),), at=at))
    elif isinstance(value, list) and node.items is not None:
        for index, item in enumerate(value):
            yield from _cel_violations(node.items, item, at=_path((index,), at=at))
    for rule in node.rules:
        read = value
        if rule.fields is not None and isinstance(value, Mapping):
            read = {name: _stand_in(value[name]) if name in rule.sized else value[name]
                    for name in rule.fields if name in value}
        try:
            content = json.dumps(read, sort_keys=True, separators=(",", ":"))
        except TypeError:  # a value JSON has not (a date PyYAML made): checked, not remembered
            holds = _holds(_program(rule.text), {"self": adapter.json_to_cel(read)})
        else:
            holds = _rule_holds(rule, content)
        if not holds:
            yield Violation(at or "(object)", rule.message)


# Rules read few fields, and most objects agree on them: a rule is evaluated once per
# distinct value of what it reads (cel-python takes about half a millisecond a rule).
@functools.lru_cache(maxsize=65536)
def _rule_holds(rule: _Rule, content: str) -> bool:
    return _holds(_program(rule.text), {"self": adapter.json_to_cel(json.loads(content))})


# celpy logs every step of an evaluation at DEBUG, with the values of the object checked:
# noise in certctl's own debug output, and the values are users' objects. (With it on, as
# `certctl serve` at its most verbose turns it on, rules also came out wrong: valid
# Certificates and Issuers were refused; tests/test_security.py runs that way.)
logging.getLogger("celpy").setLevel(logging.WARNING)


def _holds(program: celpy.Runner, activation: Mapping[str, Any]) -> bool:
    """A rule holds when it evaluates to true; an evaluation error rejects, as in Kubernetes."""
    try:
        result = program.evaluate(dict(activation))
    except evaluation.CELEvalError:
        return False
    return isinstance(result, celtypes.BoolType) and bool(result)

