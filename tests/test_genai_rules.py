"""GenAI classification rules: each packaged rule, overrides, and bad rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stream.genai import GenAIClassifier, RuleError, WorkloadFacts

CLASSIFIER = GenAIClassifier.load()


@pytest.mark.parametrize("facts, expected_class, expected_rule", [
    (WorkloadFacts("ml/scorer", {"serving.kserve.io/inferenceservice": "scorer"}), "inference", "kserve-inferenceservice"),
    (WorkloadFacts("ml/server", images=("docker.io/vllm/vllm-openai:v0.6.3",), gpus=1), "inference", "image-vllm"),
    (WorkloadFacts("ml/server", images=("ghcr.io/huggingface/text-generation-inference:2.4",)), "inference", "image-tgi"),
    (WorkloadFacts("ml/server", images=("nvcr.io/nvidia/tritonserver:24.08-py3",)), "inference", "image-triton"),
    (WorkloadFacts("ml/server", images=("ollama/ollama:0.3.12",)), "inference", "image-ollama"),
    (WorkloadFacts("ml/emb", images=("ghcr.io/huggingface/text-embeddings-inference:1.5",)), "inference", "image-tei"),
    (WorkloadFacts("ml/head", {"ray.io/node-type": "head"}, ("rayproject/ray:2.9",)), "training", "ray-cluster"),
    (WorkloadFacts("ml/serve", {"ray.io/serve": "true", "ray.io/node-type": "worker"}), "inference", "ray-serve"),
    (WorkloadFacts("ml/job", {"training.kubeflow.org/job-name": "ft"}), "training", "kubeflow-training"),
    (WorkloadFacts("ml/alice", images=("quay.io/jupyter/pytorch-notebook:latest",), gpus=1), "notebook", "image-jupyter"),
    (WorkloadFacts("ml/ft", images=("pytorch/pytorch:2.4.0-cuda12.1",), gpus=8), "training", "image-training"),
    (WorkloadFacts("ml/ui", images=("ghcr.io/open-webui/open-webui:main",)), "agent/app", "image-llm-app"),
    (WorkloadFacts("ml/mystery", images=("acme/secret-sauce:1",), gpus=1), "inference", "gpu-request"),
    (WorkloadFacts("genai/rag-api"), "agent/app", "name-llm-app"),
    (WorkloadFacts("team/x", {"app": "ollama"}), "inference", "name-inference-server"),
    (WorkloadFacts("shop/qdrant", images=("qdrant/qdrant:v1.11",)), "none", None),
    (WorkloadFacts("gpu-operator/nvidia-dcgm-exporter", images=("nvcr.io/nvidia/k8s/dcgm-exporter:3.3",)), "none", None),
])
def test_packaged_rules(facts, expected_class, expected_rule) -> None:
    assert CLASSIFIER.classify(facts) == (expected_class, expected_rule)


def test_user_rules_come_first(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: our-batch, class: training, image: 'acme/batch'}\n"
                    "  - {name: qdrant-is-app, class: agent/app, app: qdrant}\n")
    classifier = GenAIClassifier.load(path)
    assert classifier.classify(WorkloadFacts("ml/x", images=("acme/batch:1",), gpus=4)) == ("training", "our-batch")
    assert classifier.classify(WorkloadFacts("shop/qdrant"))[0] == "agent/app"
    # packaged rules still apply after the user's
    assert classifier.classify(WorkloadFacts("ml/y", images=("ollama/ollama:1",)))[0] == "inference"


@pytest.mark.parametrize("text, message", [
    ("rules: 3", "'rules' list"),
    ("rules:\n  - {name: a, class: wizard, app: x}", "class must be one of"),
    ("rules:\n  - {name: a, class: inference}", "at least one condition"),
    ("rules:\n  - {name: a, class: inference, image: '('}", "invalid regular expression"),
])
def test_bad_rule_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError, match=message):
        GenAIClassifier.load(path)
