"""The domain catalog: DNS names to categories (LLM APIs, model hubs, registries …).

The packaged catalog (``data/domains.yaml``) is versioned with flowctl; users add
or override entries with a file of the same shape (``domain_catalog`` setting).
Matching runs once per distinct name in a batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

UNKNOWN = "unknown"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class DomainRule:
    pattern: str
    category: str
    provider: str

    def regex(self) -> str:
        labels = self.pattern.lower().rstrip(".").split(".")
        return r"\.".join(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*" if lab == "*" else
                          re.escape(lab).replace(r"\*", r"[a-z0-9_-]*") for lab in labels)


def _load_rules(doc: object, source: str) -> list[DomainRule]:
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), dict):
        raise CatalogError(f"{source}: expected a mapping with 'version' and 'categories'")
    rules = []
    for category, entries in doc["categories"].items():
        for entry in entries or []:
            if isinstance(entry, str):
                entry = {"pattern": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str) or not entry["pattern"]:
                raise CatalogError(f"{source}: category {category}: each entry needs a 'pattern' string")
            rules.append(DomainRule(entry["pattern"], str(category), str(entry.get("provider") or "")))
    return rules


class DomainCatalog:
    def __init__(self, rules: list[DomainRule], version: str = "1") -> None:
        self.rules = rules
        self.version = version
        self._regexes = [(re.compile(f"^(?:{r.regex()})$"), r) for r in rules]
        self._cache: dict[str, DomainRule | None] = {}

    @classmethod
    def load(cls, extra: str | Path | None = None) -> DomainCatalog:
        """The packaged catalog, with the user's file (if any) checked first."""
        packaged = yaml.safe_load(resources.files("pipeline.stream").joinpath("data/domains.yaml").read_text())
        rules = _load_rules(packaged, "packaged domain catalog")
        version = str(packaged.get("version", "1"))
        if extra:
            path = Path(extra)
            if not path.is_file():
                raise CatalogError(f"domain catalog {path} does not exist")
            try:
                user = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise CatalogError(f"{path}: not valid YAML ({exc})") from None
            rules = _load_rules(user, str(path)) + rules
            version = f"{version}+{path.name}:{user.get('version', '?')}"
        return cls(rules, version)

    def match(self, domain: str | None) -> DomainRule | None:
        if not domain:
            return None
        name = domain.lower().rstrip(".")
        if name in self._cache:
            return self._cache[name]
        hit = next((rule for regex, rule in self._regexes if regex.match(name)), None)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[name] = hit
        return hit

    def category(self, domain: str | None) -> str:
        rule = self.match(domain)
        return rule.category if rule else UNKNOWN

    def provider(self, domain: str | None) -> str | None:
        rule = self.match(domain)
        return rule.provider or None if rule else None
