"""JSON Schemas for the custom resources flowctl writes, from their published field structure.

Calico (projectcalico.org/v3): Tier, NetworkPolicy, StagedNetworkPolicy, GlobalNetworkSet, as
documented in Calico's resource reference. AdminNetworkPolicy and BaselineAdminNetworkPolicy
(policy.networking.k8s.io/v1alpha1), as in the network-policy-api specification. Only the
fields flowctl may emit are allowed; unknown fields fail validation.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}


def _metadata(namespaced: bool) -> dict[str, Any]:
    props = {"name": _NAME, "labels": _LABELS, "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}
    if namespaced:
        props["namespace"] = {**_NAME, "maxLength": 63}
    return {"type": "object", "required": ["name", *(["namespace"] if namespaced else [])], "properties": props, "additionalProperties": False}


def _resource(api: str, kind: str, spec: dict, namespaced: bool, spec_required: bool = True) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *(["spec"] if spec_required else [])],
        "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _metadata(namespaced), "spec": spec},
        "additionalProperties": False,
    }


# ---- Calico ---------------------------------------------------------------------------------

# Calico domain names: exact DNS names, or with a wildcard label; flowctl writes lower-case names and '*.' only in front.
_CALICO_DOMAINS = {"type": "array", "minItems": 1,
                   "items": {"type": "string", "maxLength": 253,
                             "pattern": r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}

_CALICO_PORT = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
                          {"type": "string", "pattern": r"^([0-9]{1,5}:[0-9]{1,5}|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"}]}
_ENTITY = {
    "type": "object",
    "properties": {
        "nets": {"type": "array", "items": {"type": "string"}},
        "notNets": {"type": "array", "items": {"type": "string"}},
        "selector": {"type": "string"},
        "notSelector": {"type": "string"},
        "namespaceSelector": {"type": "string"},
        "ports": {"type": "array", "items": _CALICO_PORT},
        "notPorts": {"type": "array", "items": _CALICO_PORT},
        "domains": _CALICO_DOMAINS,
        "serviceAccounts": {"type": "object", "properties": {"names": {"type": "array", "items": {"type": "string"}},
                                                             "selector": {"type": "string"}}, "additionalProperties": False},
        "services": {"type": "object", "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}, "additionalProperties": False},
    },
    "additionalProperties": False,
}
_RULE = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": {"enum": ["Allow", "Deny", "Log", "Pass"]},
        "protocol": {"oneOf": [{"enum": ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite"]}, {"type": "integer", "minimum": 1, "maximum": 255}]},
        "notProtocol": {"oneOf": [{"enum": ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite"]}, {"type": "integer", "minimum": 1, "maximum": 255}]},
        "ipVersion": {"enum": [4, 6]},
        "source": _ENTITY,
        "destination": _ENTITY,
        "metadata": {"type": "object", "properties": {"annotations": {"type": "object"}}, "additionalProperties": False},
    },
    "additionalProperties": False,
}
_POLICY_SPEC = {
    "type": "object",
    "required": ["selector"],
    "properties": {
        "tier": {"type": "string"},
        "order": {"type": "number"},
        "selector": {"type": "string"},
        "serviceAccountSelector": {"type": "string"},
        "types": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}, "uniqueItems": True},
        "ingress": {"type": "array", "items": _RULE},
        "egress": {"type": "array", "items": _RULE},
        "performanceHints": {"type": "array", "items": {"enum": ["AssumeNeededOnEveryNode"]}},
    },
    "additionalProperties": False,
}


def _no_domains_in_ingress(spec: dict) -> dict:
    # DNS names are only allowed in egress rules' destinations.
    no_domains = {"not": {"required": ["domains"]}}
    ingress_rule = {**_RULE, "properties": {**_RULE["properties"], "source": {**_ENTITY, **no_domains}, "destination": {**_ENTITY, **no_domains}}}
    return {**spec, "properties": {**spec["properties"], "ingress": {"type": "array", "items": ingress_rule}}}


_STAGED_SPEC = {**_POLICY_SPEC, "properties": {**_POLICY_SPEC["properties"], "stagedAction": {"enum": ["Set", "Delete"]}}}

# ---- AdminNetworkPolicy / BaselineAdminNetworkPolicy ----------------------------------------

_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}},
            "additionalProperties": False}},
    },
    "additionalProperties": False,
}
_PODS = {"type": "object", "required": ["namespaceSelector", "podSelector"],
         "properties": {"namespaceSelector": _LABEL_SELECTOR, "podSelector": _LABEL_SELECTOR}, "additionalProperties": False}
_SUBJECT = {"type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": {"namespaces": _LABEL_SELECTOR, "pods": _PODS}, "additionalProperties": False}
_ANP_PORT = {
    "type": "object", "minProperties": 1, "maxProperties": 1,
    "properties": {
        "portNumber": {"type": "object", "required": ["protocol", "port"], "additionalProperties": False,
                       "properties": {"protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
        "namedPort": {"type": "string"},
        "portRange": {"type": "object", "required": ["protocol", "start", "end"], "additionalProperties": False,
                      "properties": {"protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "start": {"type": "integer", "minimum": 1, "maximum": 65535},
                                     "end": {"type": "integer", "minimum": 1, "maximum": 65535}}},
    },
    "additionalProperties": False,
}
_CIDRS = {"type": "array", "minItems": 1, "maxItems": 25, "items": {"type": "string", "maxLength": 43}}
_DOMAIN_LABEL = r"[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?"
_DOMAIN_NAMES = {"type": "array", "minItems": 1, "maxItems": 25,
                 "items": {"type": "string", "pattern": rf"^(\*\.)?({_DOMAIN_LABEL}\.)+{_DOMAIN_LABEL}\.?$"}}


def _peers(extra: dict) -> dict:
    props = {"namespaces": _LABEL_SELECTOR, "pods": _PODS, **extra}
    return {"type": "array", "minItems": 1, "maxItems": 100,
            "items": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": props, "additionalProperties": False}}


def _anp_rules(actions: list[str], peer_key: str, extra_peers: dict) -> dict:
    return {"type": "array", "maxItems": 100, "items": {
        "type": "object", "required": ["action", peer_key], "additionalProperties": False,
        "properties": {"name": {"type": "string", "maxLength": 100}, "action": {"enum": actions},
                       peer_key: _peers(extra_peers), "ports": {"type": "array", "maxItems": 100, "items": _ANP_PORT}}}}


_ANP_SPEC = {
    "type": "object", "required": ["priority", "subject"], "additionalProperties": False,
    "properties": {
        "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
        "subject": _SUBJECT,
        "ingress": _anp_rules(["Allow", "Deny", "Pass"], "from", {}),
        "egress": _anp_rules(["Allow", "Deny", "Pass"], "to", {"nodes": _LABEL_SELECTOR, "networks": _CIDRS, "domainNames": _DOMAIN_NAMES}),
    },
}
_BANP_SPEC = {
    "type": "object", "required": ["subject"], "additionalProperties": False,
    "properties": {
        "subject": _SUBJECT,
        "ingress": _anp_rules(["Allow", "Deny"], "from", {}),
        "egress": _anp_rules(["Allow", "Deny"], "to", {"nodes": _LABEL_SELECTOR, "networks": _CIDRS}),
    },
}
_BANP = _resource("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy", _BANP_SPEC, namespaced=False)
_BANP["properties"]["metadata"] = {**_BANP["properties"]["metadata"],
                                   "properties": {**_BANP["properties"]["metadata"]["properties"], "name": {"const": "default"}}}

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("projectcalico.org/v3", "Tier"): _resource("projectcalico.org/v3", "Tier", {
        "type": "object", "properties": {"order": {"type": "number"}, "defaultAction": {"enum": ["Deny", "Pass"]}}, "additionalProperties": False},
        namespaced=False),
    ("projectcalico.org/v3", "NetworkPolicy"): _resource("projectcalico.org/v3", "NetworkPolicy", _no_domains_in_ingress(_POLICY_SPEC), namespaced=True),
    ("projectcalico.org/v3", "StagedNetworkPolicy"): _resource("projectcalico.org/v3", "StagedNetworkPolicy", _no_domains_in_ingress(_STAGED_SPEC),
                                                               namespaced=True),
    ("projectcalico.org/v3", "GlobalNetworkSet"): _resource("projectcalico.org/v3", "GlobalNetworkSet", {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {"nets": {"type": "array", "items": {"type": "string"}}, "allowedEgressDomains": _CALICO_DOMAINS}},
        namespaced=False),
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"): _resource("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", _ANP_SPEC,
                                                                           namespaced=False),
    ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy"): _BANP,
}
