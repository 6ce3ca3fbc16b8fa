"""The search space end to end on the fakes: reflection, demo strategies, formats, objectives."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna

from prompttune.contract import (
    REASONING_CUE,
    Example,
    JobResult,
    Metric,
    PhaseChanged,
    SearchSpec,
    TaskSpec,
    TrialFinished,
)
from prompttune.search import (
    STYLE_TIPS,
    ChatRequest,
    DatasetSplits,
    Runner,
    RunnerDeps,
    TrialConfig,
)
from prompttune.search._candidates import propose
from prompttune.search._setup import new_state
from tests.fakes import (
    SENTIMENT_TASK,
    FakeChatModel,
    FakeEmbedder,
    InMemoryResponseCache,
    RecordingObserver,
    examples_scored,
    fixed_clock,
    proposer_responder,
    request_text,
    routing_responder,
    search_spec,
    sentiment_splits,
    unit_hash,
)

CONFIG = search_spec(
    max_trials=16,
    max_llm_calls=5000,
    num_instruction_candidates=3,
    max_demos=3,
    minibatch_size=8,
    seed=3,
    num_demo_sets=2,
    num_finalists=2,
)
DATA = sentiment_splits(train=24, validation=40, test=24)
# What the reflection round proposes, by the parity of its style tip: two distinct
# instructions for the task.
REFLECTED = (
    "Decide whether the review praises or criticises the film: positive or negative.",
    "Decide whether the review is positive or negative: does it praise the film?",
)


def reflecting_responder(request: ChatRequest) -> str:
    if "Instructions tried so far" in request.messages[-1].content:
        tip = request.messages[-1].content.split("Tip: ")[1].split("\n")[0]
        return REFLECTED[STYLE_TIPS.index(tip) % 2]
    return routing_responder(request)


def make_runner(
    model: FakeChatModel, storage: optuna.storages.BaseStorage | str | None = None
) -> tuple[Runner, RecordingObserver]:
    observer = RecordingObserver()
    deps = RunnerDeps(
        model, model, FakeEmbedder(), observer, InMemoryResponseCache(), clock=fixed_clock()
    )
    return Runner(deps, storage), observer


async def run(
    config: SearchSpec = CONFIG,
    storage: optuna.storages.BaseStorage | str | None = None,
    model: FakeChatModel | None = None,
) -> tuple[JobResult, FakeChatModel, RecordingObserver]:
    model = model or FakeChatModel(reflecting_responder)
    runner, observer = make_runner(model, storage)
    result = await runner.run(SENTIMENT_TASK, DATA, config, study_name="job")
    return result, model, observer


def reflection_prompts(model: FakeChatModel) -> list[str]:
    return [
        r.messages[-1].content
        for r in model.requests
        if "Instructions tried so far" in r.messages[-1].content
    ]


async def test_reflection_round_grows_the_instruction_space_in_an_rdb_study(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result, model, observer = await run(storage=storage)
    prompts = reflection_prompts(model)
    assert len(prompts) == CONFIG.num_reflection_candidates
    assert all("Accuracy:" in p and "Model answer:" in p for p in prompts)
    study = optuna.load_study(study_name="job", storage=storage)
    highs = [t.distributions["instruction"].high for t in study.trials]  # type: ignore[attr-defined]
    assert highs == sorted(highs) and highs[-1] == highs[0] + 2  # two reflected candidates
    half = CONFIG.budget.max_trials // 2
    assert max(highs[:half]) == highs[0]
    # each reflected instruction is tried right away, in the best configuration so far
    assert [t.params["instruction"] for t in study.trials[half : half + 2]] == [
        highs[0] + 1,
        highs[0] + 2,
    ]
    assert [e.phase for e in observer.of_type(PhaseChanged)].count("reflecting") == 1
    assert result.trials_completed + result.trials_pruned == CONFIG.budget.max_trials


async def test_reflection_mistakes_come_from_the_current_best() -> None:
    _, model, _ = await run()
    prompt = reflection_prompts(model)[0]
    valid_inputs = {ex.inputs["input"] for ex in DATA.validation}
    shown = [line for line in prompt.splitlines() if line.startswith("Input: ")]
    assert shown and all(line.removeprefix("Input: ") in valid_inputs for line in shown)


async def test_no_reflection_round_when_disabled() -> None:
    config = search_spec(CONFIG, num_reflection_candidates=0)
    _, model, observer = await run(config)
    assert reflection_prompts(model) == []
    assert "reflecting" not in [e.phase for e in observer.of_type(PhaseChanged)]


ARITHMETIC = TaskSpec(
    description="Add two numbers.",
    seed_instruction="Add the numbers.",
    input_fields=("question",),
    metric=Metric.EXACT_MATCH,
)


def arithmetic_splits() -> DatasetSplits:
    def examples(prefix: str, count: int) -> tuple[Example, ...]:
        return tuple(
            Example({"question": f"What is {i} + {i + 3}?"}, str(2 * i + 3), id=f"{prefix}{i:02d}")
            for i in range(count)
        )

    return DatasetSplits(examples("tr", 8), examples("va", 24), examples("te", 8))


def arithmetic_responder(request: ChatRequest) -> str:
    if "You write clear instructions" in request.messages[0].content:
        return proposer_responder(request)
    final = request.messages[-1].content
    numbers = [
        int(n) for n in re.findall(r"\d+", final.split("\n")[-3 if REASONING_CUE in final else -1])
    ]
    total = str(sum(numbers[:2]))
    if REASONING_CUE in final:
        return f"First {numbers[0]}, then add {numbers[1]}: 99 steps.\nAnswer: {total}"
    return total if unit_hash(request_text(request)) < 0.3 else f"The sum is {total}."


async def test_reasoning_is_searched_for_open_tasks_with_a_larger_answer_cap() -> None:
    model = FakeChatModel(arithmetic_responder)
    runner, _ = make_runner(model, optuna.storages.InMemoryStorage())
    config = search_spec(CONFIG, max_demos=0, num_reflection_candidates=0)
    result = await runner.run(ARITHMETIC, arithmetic_splits(), config, study_name="job")
    assert result.improved and result.best.prompt.format.reasoning
    assert result.best.validation.mean == 1.0  # scored on the text after "Answer:"
    task_requests = [r for r in model.requests if "Add" in r.messages[0].content]
    reasoning = [r for r in task_requests if REASONING_CUE in r.messages[-1].content]
    assert reasoning and all(r.max_tokens == 256 for r in reasoning)
    assert all(r.max_tokens == 32 for r in task_requests if r not in reasoning)
    closed = dataclasses.replace(config, allow_reasoning=False)
    result = await runner.run(ARITHMETIC, arithmetic_splits(), closed, study_name="job-2")
    assert not result.best.prompt.format.reasoning


async def test_reasoning_is_off_for_classification_unless_allowed() -> None:
    default, allowed = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    await run(storage=default)
    await run(search_spec(CONFIG, allow_reasoning=True), storage=allowed)
    trials = optuna.load_study(study_name="job", storage=default).trials
    assert all("reasoning" not in t.params for t in trials)
    trials = optuna.load_study(study_name="job", storage=allowed).trials
    assert trials[0].params["reasoning"] is False
    assert any(t.params["reasoning"] for t in trials)


async def test_bootstrapped_and_knn_demo_sets_join_the_space() -> None:
    model = FakeChatModel(reflecting_responder)
    deps = RunnerDeps(model, model, FakeEmbedder(), RecordingObserver(), clock=fixed_clock())
    state = new_state(deps, SENTIMENT_TASK, DATA, CONFIG, runner_index=0)
    await propose(state, deps.embedder)
    names = [s.name for s in state.space.demo_sets]
    assert names[-2:] == ["bootstrapped", "knn"] and state.space.demo_sets[-1].knn
    task_calls = state.ledger.role("task").llm_calls
    assert task_calls == 3 * CONFIG.max_demos  # the bootstrap round, paid through the gateway
    knn_index = len(names) - 1
    key, prompt = state.space.prompt_for(SENTIMENT_TASK, TrialConfig(demo_set=knn_index, n_demos=2))
    assert prompt.knn_k == 2 and prompt.demos == () and len(prompt.demo_pool) == len(DATA.train)
    assert key[1] == ("knn:knn:2",)


async def test_multi_objective_scores_first_rung_only_and_returns_a_pareto_set() -> None:
    storage = optuna.storages.InMemoryStorage()
    config = search_spec(CONFIG, multi_objective=True, max_trials=12)
    result, _, observer = await run(config, storage=storage)
    study = optuna.load_study(study_name="job", storage=storage)
    assert len(study.directions) == 2
    finished = observer.of_type(TrialFinished)
    assert all(t.examples == CONFIG.minibatch_size and not t.pruned for t in finished)
    assert result.pareto and all(examples_scored(p) == len(DATA.validation) for p in result.pareto)
    tokens = [p.prompt_tokens for p in result.pareto]
    means = [p.validation.mean for p in result.pareto]
    assert tokens == sorted(tokens) and means == sorted(means) and len(set(tokens)) == len(tokens)
    again, _, _ = await run(config)
    assert again == result


async def test_budget_holds_with_concurrent_calls_across_every_role() -> None:
    model = FakeChatModel(reflecting_responder, delay=0.001)
    observer = RecordingObserver()
    deps = RunnerDeps(
        model, model, FakeEmbedder(), observer, task_max_concurrency=8,
        proposer_max_concurrency=4, clock=fixed_clock(),
    )  # fmt: skip
    config = search_spec(CONFIG, max_llm_calls=230, max_trials=40)
    result = await Runner(deps).run(SENTIMENT_TASK, DATA, config, study_name="job")
    assert model.max_in_flight > 1
    assert model.calls <= 230 and result.usage.llm_calls == model.calls
    assert examples_scored(result.baseline) == len(DATA.validation)


async def test_warm_start_trials_follow_the_baseline() -> None:
    """After the baseline come the seed prompt with each demo set (all its demos), in the
    seed's own format; then the sampler's own trials."""
    storage = optuna.storages.InMemoryStorage()
    model = FakeChatModel(reflecting_responder)
    runner, _ = make_runner(model, storage)
    await runner.run(SENTIMENT_TASK, DATA, CONFIG, "warm")
    trials = optuna.load_study(study_name="warm", storage=storage).trials
    warm = [t.params for t in trials[1:5]]
    assert [(p["instruction"], p["demo_set"], p["n_demos"]) for p in warm] == [
        (0, index, CONFIG.max_demos) for index in range(4)
    ]
    seed_format = {"placement": "user", "answer_prefix": "Sentiment:", "layout": "chat_turns"}
    assert all(p.items() >= seed_format.items() for p in warm)
    # at most all but one startup trial (here 5) are queued: the sampler picks the 6th
    queued = ["fixed_params" in t.system_attrs for t in trials]
    assert queued[:6] == [True] * 5 + [False]
