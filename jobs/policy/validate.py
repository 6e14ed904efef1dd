"""Offline validation of every generated object before it is written.

Kubernetes objects are checked against the Kubernetes OpenAPI schema shipped by
kubernetes-validate (strict: unknown fields fail); custom resources against
:mod:`jobs.policy.crd_schemas`. Checks the schemas cannot express (CIDR syntax, ``except``
inside ``cidr``, ``endPort >= port``) run here too.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

import jsonschema

from jobs.policy.crd_schemas import SCHEMAS
from jobs.policy.names import is_dns1123_label, is_dns1123_subdomain, is_domain, is_label_key, is_label_value

KUBERNETES_VERSION = "1.33.0"


class PolicyValidationError(ValueError):
    """A generated object does not validate; the message names the object and the field."""


def _where(obj: dict) -> str:
    meta = obj.get("metadata", {})
    ns = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{meta.get('name')}"


@functools.cache
def _validator(api: str, kind: str) -> jsonschema.protocols.Validator:
    schema = SCHEMAS[(api, kind)]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


@functools.cache
def _kubernetes_validator(api: str, kind: str) -> jsonschema.protocols.Validator | None:
    """A strict validator from the OpenAPI-derived schemas kubernetes-validate ships, built once per kind.

    (kubernetes_validate.validate re-reads the schema files on every call, which dominates a run of thousands of objects.)
    """
    import re

    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api)
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(_inline_refs(schema, definitions["$defs"]), registry=registry)


def _inline_refs(node: Any, defs: dict, seen: tuple[str, ...] = ()) -> Any:
    """The schema with each non-recursive ``$ref`` into the definitions replaced by its target.

    Resolving a reference costs more than checking the fields it stands for; recursive references stay for the registry.
    """
    if isinstance(node, list):
        return [_inline_refs(v, defs, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    name = ref.rpartition("#/$defs/")[2] if isinstance(ref, str) and "#/$defs/" in ref else None
    if name is None or name in seen or name not in defs:
        return {k: _inline_refs(v, defs, seen) for k, v in node.items()}
    target = _inline_refs(defs[name], defs, (*seen, name))
    rest = {k: _inline_refs(v, defs, seen) for k, v in node.items() if k not in ("$ref", "description")}
    return {**target, **rest} if not rest.keys() & target.keys() else {"allOf": [target], **rest}


def _cidr(text: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except (TypeError, ValueError) as exc:
        raise PolicyValidationError(f"{where}: {text!r} is not a valid CIDR: {exc}") from None


def _check_network_policy(obj: dict, where: str) -> None:
    spec = obj["spec"]
    for direction, side in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            for peer in rule.get(side) or []:
                block = peer.get("ipBlock")
                if block:
                    net = _cidr(block["cidr"], where)
                    for ex in block.get("except") or []:
                        e = _cidr(ex, where)
                        if e.version != net.version or not e.subnet_of(net):
                            raise PolicyValidationError(f"{where}: {direction}[{i}] except {ex} is outside {block['cidr']}")
                    if peer.keys() - {"ipBlock"}:
                        raise PolicyValidationError(f"{where}: ipBlock cannot be combined with selectors")
            for port in rule.get("ports") or []:
                p, end = port.get("port"), port.get("endPort")
                if isinstance(p, int) and not 1 <= p <= 65535:
                    raise PolicyValidationError(f"{where}: {direction}[{i}] port {p} out of range")
                if end is not None and (not isinstance(p, int) or end < p or end > 65535):
                    raise PolicyValidationError(f"{where}: {direction}[{i}] endPort {end} must be a number >= port {p}")


def _check_networks(obj: dict, where: str) -> None:
    spec = obj.get("spec") or {}
    for rule in (spec.get("egress") or []) + (spec.get("ingress") or []):
        for peer in rule.get("to") or rule.get("from") or []:
            for cidr in peer.get("networks") or []:
                _cidr(cidr, where)
        for entity in (rule.get("source"), rule.get("destination")):
            for cidr in ((entity or {}).get("nets") or []) + ((entity or {}).get("notNets") or []):
                _cidr(cidr, where)
    for cidr in spec.get("nets") or []:
        _cidr(cidr, where)


def _check_domains(obj: dict, where: str) -> None:
    # The schema patterns are searched with '$', which also matches before a final newline; this check is exact.
    spec = obj.get("spec") or {}
    names = list(spec.get("allowedEgressDomains") or [])
    for rule in (spec.get("egress") or []) + (spec.get("ingress") or []):
        names += (rule.get("destination") or {}).get("domains") or []
        for peer in rule.get("to") or []:
            names += peer.get("domainNames") or []
    for name in names:
        if not is_domain(name, wildcard=True):
            raise PolicyValidationError(f"{where}: {name!r} is not a valid domain name")


def _check_metadata(obj: dict, where: str) -> None:
    # The OpenAPI schema types metadata but does not check names and labels; the API server would.
    meta = obj.get("metadata") or {}
    if not is_dns1123_subdomain(meta.get("name", "")):
        raise PolicyValidationError(f"{where}: metadata.name is not a valid RFC 1123 subdomain")
    if "namespace" in meta and not is_dns1123_label(meta["namespace"]):
        raise PolicyValidationError(f"{where}: metadata.namespace is not a valid RFC 1123 label")
    for key, value in (meta.get("labels") or {}).items():
        if not is_label_key(key) or not is_label_value(value):
            raise PolicyValidationError(f"{where}: invalid label {key!r}: {value!r}")


def validate_object(obj: dict) -> None:
    """Raise :class:`PolicyValidationError` unless ``obj`` is a valid object of its kind."""
    api, kind, where = obj.get("apiVersion"), obj.get("kind"), _where(obj)
    _check_metadata(obj, where)
    if (api, kind) in SCHEMAS:
        errors = sorted(_validator(api, kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            path = ".".join(str(p) for p in e.absolute_path)
            raise PolicyValidationError(f"{where}: {path or '(object)'}: {e.message}")
        _check_networks(obj, where)
        _check_domains(obj, where)
        return
    validator = _kubernetes_validator(str(api), str(kind))
    if validator is None:
        raise PolicyValidationError(f"{where}: no schema for {api} {kind}")
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = ".".join(str(p) for p in e.absolute_path)
        raise PolicyValidationError(f"{where}: {path or '(object)'}: {e.message}")
    if kind == "NetworkPolicy":
        _check_network_policy(obj, where)


def validate_all(objects: list[dict]) -> int:
    for obj in objects:
        validate_object(obj)
    return len(objects)
