"""GenAI classification of workloads by a documented, overridable rule set (data/genai_rules.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

CLASSES = ("inference", "training", "notebook", "agent/app", "none")


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class WorkloadFacts:
    """What is known about one workload: from the inventory when it has an entry, else from the flow."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    gpus: int = 0


@dataclass
class GenAIRule:
    name: str
    genai_class: str
    image: re.Pattern | None = None
    label_key: str | None = None
    label: dict[str, re.Pattern] = field(default_factory=dict)
    gpu: bool | None = None
    app: re.Pattern | None = None

    def matches(self, facts: WorkloadFacts) -> bool:
        if self.image is not None and not any(self.image.search(i) for i in facts.images):
            return False
        if self.label_key is not None and self.label_key not in facts.labels:
            return False
        for key, regex in self.label.items():
            value = facts.labels.get(key)
            if value is None or not regex.search(value):
                return False
        if self.gpu is not None and (facts.gpus > 0) != self.gpu:
            return False
        if self.app is not None:
            text = " ".join((facts.name, facts.labels.get("app", ""), facts.labels.get("app.kubernetes.io/name", "")))
            if not self.app.search(text):
                return False
        return True


def _compile(pattern: object, where: str) -> re.Pattern:
    try:
        return re.compile(str(pattern))
    except re.error as exc:
        raise RuleError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def parse_rules(doc: object, source: str) -> list[GenAIRule]:
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError(f"{source}: expected a mapping with a 'rules' list")
    rules = []
    for i, spec in enumerate(doc["rules"]):
        where = f"{source}: rule {i + 1}"
        if not isinstance(spec, dict) or "name" not in spec or "class" not in spec:
            raise RuleError(f"{where}: each rule needs 'name' and 'class'")
        if spec["class"] not in CLASSES:
            raise RuleError(f"{where}: class must be one of {', '.join(CLASSES)}")
        if not {"image", "label_key", "label", "gpu", "app"} & set(spec):
            raise RuleError(f"{where}: a rule needs at least one condition (image, label_key, label, gpu, app)")
        label = spec.get("label") or {}
        if not isinstance(label, dict):
            raise RuleError(f"{where}: 'label' must map label keys to regular expressions")
        rules.append(GenAIRule(
            name=str(spec["name"]), genai_class=str(spec["class"]),
            image=_compile(spec["image"], where) if "image" in spec else None,
            label_key=str(spec["label_key"]) if "label_key" in spec else None,
            label={str(k): _compile(v, where) for k, v in label.items()},
            gpu=bool(spec["gpu"]) if "gpu" in spec else None,
            app=_compile(spec["app"], where) if "app" in spec else None,
        ))
    return rules


class GenAIClassifier:
    """First matching rule wins; user rules (if any) are checked before the packaged ones."""

    def __init__(self, rules: list[GenAIRule]) -> None:
        self.rules = rules
        self._cache: dict[tuple, tuple[str, str | None]] = {}

    @classmethod
    def load(cls, extra: str | Path | None = None) -> GenAIClassifier:
        packaged = yaml.safe_load(resources.files("pipeline.stream").joinpath("data/genai_rules.yaml").read_text())
        rules = parse_rules(packaged, "packaged GenAI rules")
        if extra:
            path = Path(extra)
            if not path.is_file():
                raise RuleError(f"GenAI rules file {path} does not exist")
            try:
                rules = parse_rules(yaml.safe_load(path.read_text()), str(path)) + rules
            except yaml.YAMLError as exc:
                raise RuleError(f"{path}: not valid YAML ({exc})") from None
        return cls(rules)

    def classify(self, facts: WorkloadFacts) -> tuple[str, str | None]:
        key = (facts.name, tuple(sorted(facts.labels.items())), facts.images, facts.gpus)
        hit = self._cache.get(key)
        if hit is None:
            hit = next(((r.genai_class, r.name) for r in self.rules if r.matches(facts)), ("none", None))
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit
