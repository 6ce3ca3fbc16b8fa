"""A small optimisation job as a raw CreateJobRequest: the wire, not the Python SDK, so the
ops tests see what any language's client sends."""

from __future__ import annotations

from prompttune.v1 import optimizer_pb2 as pb

POSITIVE = ("wonderful", "delightful", "moving", "brilliant", "charming", "superb")
NEGATIVE = ("dull", "tedious", "awful", "clumsy", "boring", "painful")


def examples(count: int, prefix: str) -> list[pb.Example]:
    found = []
    for index in range(count):
        words = POSITIVE if index % 2 == 0 else NEGATIVE
        text = f"the film was {words[(index // 2) % len(words)]} #{prefix}{index}"
        label = "positive" if index % 2 == 0 else "negative"
        found.append(pb.Example(id=f"{prefix}{index}", inputs={"input": text}, output=label))
    return found


def small_job(base_url: str, request_id: str = "") -> pb.CreateJobRequest:
    """Sentiment on 12/16/8 examples against an OpenAI-compatible endpoint, 4 trials."""
    return pb.CreateJobRequest(
        task=pb.TaskSpec(
            description="Decide whether a movie review sentence is positive or negative.",
            labels=["positive", "negative"],
            metric=pb.METRIC_LABEL_CHOICE,
        ),
        dataset=pb.Dataset(
            train=examples(12, "tr"), validation=examples(16, "va"), test=examples(8, "te")
        ),
        model=pb.ModelSpec(
            kind=pb.MODEL_KIND_OPENAI_COMPATIBLE, base_url=base_url, model="fake-model"
        ),
        search=pb.SearchSpec(
            budget=pb.Budget(max_trials=4, max_llm_calls=600),
            num_instruction_candidates=2,
            max_demos=2,
            minibatch_size=8,
            seed=1,
        ),
        request_id=request_id,
    )
