"""Validation of names, label keys and values, and domains that come from traffic.

Everything that ends up in a generated object comes from flow records, which an
attacker can shape (pod labels, DNS answers). Values that Kubernetes would not
accept are rejected here with a reason, never emitted.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_HOST_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# Labels Kubernetes controllers add per pod, per revision or per run: never part of a stable selector.
VOLATILE_LABELS = frozenset({
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
})


class InvalidName(ValueError):
    """A value from traffic that Kubernetes would not accept where it is needed."""


def is_dns1123_label(text: str) -> bool:
    return isinstance(text, str) and len(text) <= 63 and bool(_DNS1123_LABEL.fullmatch(text))


def is_dns1123_subdomain(text: str) -> bool:
    return isinstance(text, str) and len(text) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(text))


def is_label_key(key: str) -> bool:
    """A Kubernetes label key: optional DNS-1123 subdomain prefix, '/', and a name of at most 63 characters."""
    if not isinstance(key, str) or not key:
        return False
    prefix, _, name = key.rpartition("/")
    if "/" in key and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def is_label_value(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_LABEL_VALUE.fullmatch(value))


def is_domain(name: str, wildcard: bool = False) -> bool:
    """A lower-case DNS host name usable in a domain-based rule: RFC 1123 labels, at least two, at most 253 characters.

    With ``wildcard``, a leading ``*.`` is accepted too (Calico: it matches one or more labels at that place;
    AdminNetworkPolicy ``domainNames`` allow it only there). A name seen in traffic never carries one.
    """
    if not isinstance(name, str) or not name or len(name) > 253 or name.endswith("."):
        return False
    labels = name.split(".")
    if wildcard and labels[0] == "*":
        labels = labels[1:]
    return len(labels) >= 2 and all(len(p) <= 63 and _HOST_LABEL.fullmatch(p) for p in labels)


def check_domain(name: str, what: str = "domain", wildcard: bool = True) -> str:
    if not is_domain(name, wildcard):
        form = "a lower-case DNS name, optionally starting with '*.'" if wildcard else "a lower-case DNS name"
        raise InvalidName(f"{what} {name!r} is not {form}")
    return name


def check_namespace(namespace: str) -> str:
    if not is_dns1123_label(namespace):
        raise InvalidName(f"namespace {namespace!r} is not a valid RFC 1123 label")
    return namespace


def check_object_name(name: str, what: str = "name", max_length: int = 253) -> str:
    if not is_dns1123_subdomain(name) or len(name) > max_length:
        raise InvalidName(f"{what} {name!r} is not a valid Kubernetes object name (RFC 1123 subdomain, at most {max_length} characters)")
    return name


def stable_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """Labels usable in a selector: not volatile, key and value valid for Kubernetes."""
    if not labels:
        return {}
    return {k: v for k, v in labels.items() if k not in VOLATILE_LABELS and is_label_key(k) and is_label_value(v)}
