"""Hypothesis strategies that build every contract type, kNN prompts with reasoning included."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import strategies as st

from prompttune import contract as c

text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
name = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
small = st.integers(min_value=1, max_value=10_000)
count = st.integers(min_value=0, max_value=10_000)
fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
positive = st.floats(min_value=0.5, max_value=1e6, allow_nan=False)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)

examples = st.builds(
    c.Example,
    inputs=st.dictionaries(name, text, min_size=1, max_size=3),
    output=text,
    id=text,
    tags=st.dictionaries(name, text, max_size=2),
)
models = st.builds(
    c.ModelSpec,
    kind=st.sampled_from(c.ModelKind),
    endpoint=name,
    base_url=text,
    model=text,
    api_key_env=text,
    temperature=st.floats(min_value=0.01, max_value=2.0),
    max_tokens=small,
    max_concurrency=count,
    requests_per_minute=count,
    tokens_per_minute=count,
    usd_per_million_prompt_tokens=fraction,
    usd_per_million_completion_tokens=fraction,
)
budgets = st.builds(
    c.Budget,
    max_trials=small,
    max_llm_calls=small,
    max_wall_seconds=positive,
    max_tokens=count,
    max_cost_usd=fraction,
)
searches = st.builds(
    c.SearchSpec,
    budget=budgets,
    num_instruction_candidates=count,
    max_demos=count,
    minibatch_size=small,
    seed=count,
    num_demo_sets=small,
    num_finalists=small,
    proposer=st.none() | models,
    disable_cache=st.booleans(),
    allow_reasoning=st.none() | st.booleans(),
    multi_objective=st.booleans(),
    num_reflection_candidates=count,
    parallelism=small,
    scoring=st.sampled_from(c.Scoring),
    calibrate=st.none() | st.booleans(),
    objective=st.sampled_from(c.Objective),
    slice_tag=name,
    selection_fraction=st.none() | fraction,
)
formats = st.builds(
    c.PromptFormat,
    instruction_placement=st.sampled_from(c.InstructionPlacement),
    demo_layout=st.sampled_from(c.DemoLayout),
    answer_prefix=text,
    reasoning=st.booleans(),
)
prompts = st.builds(
    c.Prompt,
    instruction=text,
    demos=st.lists(examples, max_size=3).map(tuple),
    format=formats,
    input_fields=st.lists(name, min_size=1, max_size=3).map(tuple),
    output_name=name,
    labels=st.lists(name, max_size=3).map(tuple),
    demo_pool=st.lists(examples, max_size=4).map(tuple),
    knn_k=count,
    calibration=st.none()
    | st.builds(
        c.Calibration,
        weights=st.dictionaries(name, positive, max_size=3),
        content_free_inputs=st.lists(text, max_size=3).map(tuple),
    ),
)
tasks = st.builds(
    c.TaskSpec,
    description=text,
    metric=st.sampled_from(c.Metric),
    seed_instruction=text,
    input_fields=st.lists(name, min_size=1, max_size=3).map(tuple),
    labels=st.lists(name, max_size=4).map(tuple),
    output_name=name,
    rubric=text,
    judge=st.none() | models,
    baseline=st.none() | prompts,
)
usages = st.builds(
    c.Usage,
    llm_calls=count,
    prompt_tokens=count,
    completion_tokens=count,
    cache_hits=count,
    cache_misses=count,
    failed_calls=count,
    cost_usd=fraction,
)
slice_scores = st.builds(
    c.SliceScore,
    tag=name,
    value=text,
    mean=fraction,
    ci_low=fraction,
    ci_high=fraction,
    examples=count,
)
scores = st.builds(
    c.Score,
    mean=fraction,
    ci_low=fraction,
    ci_high=fraction,
    examples=count,
    failed=count,
    per_label=st.dictionaries(name, fraction, max_size=3),
    confusion=st.none()
    | st.builds(
        c.ConfusionMatrix,
        labels=st.lists(name, max_size=3).map(tuple),
        counts=st.lists(count, max_size=9).map(tuple),
    ),
    label_metrics=st.dictionaries(
        name,
        st.builds(c.LabelMetrics, precision=fraction, recall=fraction, f1=fraction, support=count),
        max_size=2,
    ),
    macro_f1=fraction,
    slices=st.lists(slice_scores, max_size=2).map(tuple),
    worst_slice=st.none() | slice_scores,
    scoring=st.sampled_from([c.Scoring.GENERATION, c.Scoring.LABEL_PROBABILITIES]),
)
prompt_scores = st.builds(
    c.PromptScores,
    prompt=prompts,
    validation=scores,
    test=st.none() | scores,
    prompt_tokens=count,
    selection=st.none() | scores,
    optimism=fraction,
)
single_results = st.builds(
    c.JobResult,
    baseline=prompt_scores,
    best=prompt_scores,
    improved=st.booleans(),
    summary=text,
    usage=usages,
    trials_completed=count,
    trials_pruned=count,
    wall_seconds=fraction,
    stop_reason=text,
    pareto=st.lists(prompt_scores, max_size=2).map(tuple),
    usage_by_role=st.dictionaries(name, usages, max_size=2),
    partial=st.booleans(),
    scoring=st.sampled_from([c.Scoring.GENERATION, c.Scoring.LABEL_PROBABILITIES]),
    scoring_note=text,
    dropped_instructions=st.lists(
        st.builds(c.DroppedInstruction, instruction=text, reason=text), max_size=2
    ).map(tuple),
)
model_results = st.builds(
    c.ModelResult,
    model=models,
    result=single_results,
    seconds_per_example=fraction,
    on_frontier=st.booleans(),
)
results = st.builds(
    lambda result, entries, recommendation: dataclasses.replace(
        result, models=tuple(entries), recommendation=recommendation
    ),
    single_results,
    st.lists(model_results, max_size=1),
    st.none() | st.builds(c.Recommendation, model_index=count, reason=text),
)
estimates = st.builds(
    c.Estimate,
    llm_calls=count,
    tokens=count,
    endpoints=st.lists(
        st.builds(c.EndpointCheck, endpoint=name, field=name, reachable=st.booleans(), error=text),
        max_size=2,
    ).map(tuple),
)
jobs = st.builds(
    c.Job,
    id=name,
    state=st.sampled_from(c.JobState),
    create_time=times,
    update_time=times,
    task=tasks,
    model=models,
    search=searches,
    progress=st.builds(
        c.Progress, phase=name, trials_completed=count, best_score=fraction, usage=usages
    ),
    result=st.none() | results,
    error=text,
    estimate=st.none() | estimates,
    request_id=text,
    models=st.lists(models, max_size=2).map(tuple),
    template_job_id=text,
)
payloads = st.one_of(
    st.builds(lambda s: {"state_changed": c.StateChanged(s)}, st.sampled_from(c.JobState)),
    st.builds(lambda p: {"phase_changed": c.PhaseChanged(p)}, name),
    st.builds(
        lambda t, s: {"trial_finished": c.TrialFinished(t, s, 3, False, "x")}, count, fraction
    ),
    st.builds(lambda t, s: {"new_best": c.NewBest(t, s)}, count, fraction),
    st.builds(lambda u: {"budget_used": c.BudgetUsed(u)}, usages),
    st.builds(lambda a, b: {"notice": c.Notice(a, b)}, name, text),
)
events = st.builds(
    lambda job_id, sequence, time, payload: c.JobEvent(job_id, sequence, time, **payload),
    name,
    small,
    times,
    payloads,
)
evaluations = st.builds(
    c.Evaluation,
    score=scores,
    results=st.lists(
        st.builds(
            c.ExampleResult,
            id=text,
            answer=text,
            score=fraction,
            error=text,
            prediction=text,
            label_probabilities=st.dictionaries(name, fraction, max_size=3),
        ),
        max_size=3,
    ).map(tuple),
    usage=usages,
)
comparisons = st.builds(
    c.Comparison,
    a=evaluations,
    b=evaluations,
    comparison=st.builds(
        c.PairedComparison,
        difference=fraction,
        ci_low=fraction,
        ci_high=fraction,
        p_value=fraction,
        examples=count,
        per_label_difference=st.dictionaries(name, fraction, max_size=2),
        verdict=st.sampled_from(["b_better", "b_worse", "no_difference"]),
    ),
)
job_datasets = st.builds(
    c.JobDataset,
    job_id=name,
    train=st.lists(examples, max_size=2).map(tuple),
    validation=st.lists(examples, max_size=2).map(tuple),
    test=st.lists(examples, max_size=2).map(tuple),
)
datasets = st.one_of(
    st.builds(
        c.Dataset.from_splits,
        train=st.lists(examples, max_size=3),
        validation=st.lists(examples, max_size=3),
        test=st.lists(examples, max_size=3),
    ),
    st.builds(
        c.Dataset.from_examples,
        examples=st.lists(examples, min_size=1, max_size=3),
        split=st.builds(
            c.SplitRatio,
            train=st.just(0.6),
            validation=st.just(0.2),
            test=st.just(0.2),
            seed=count,
        ),
    ),
)

EVERY_TYPE = {
    "example": examples,
    "model": models,
    "task": tasks,
    "search": searches,
    "prompt": prompts,
    "score": scores,
    "result": results,
    "estimate": estimates,
    "job": jobs,
    "event": events,
    "evaluation": evaluations,
    "dataset": datasets,
    "comparison": comparisons,
    "job_dataset": job_datasets,
}
