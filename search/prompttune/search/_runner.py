"""The search runner: propose candidates, search them with Optuna ask/tell, promote, report.

Phases: "proposing" (instruction candidates and demo sets), "searching" (one Optuna trial per
prompt configuration, scored on growing minibatches of the validation split and pruned by
successive halving), "validating" (the best few and the baseline on the full validation
split; the winner is chosen here) and "testing" (baseline and winner on the test split).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import structlog
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from prompttune.search._budget import Budget, estimate_call_tokens
from prompttune.search._demos import DemoSet, build_demo_sets
from prompttune.search._errors import BudgetExceeded, SearchCancelled
from prompttune.search._evaluate import CallSettings, score_examples
from prompttune.search._gateway import LLMGateway, add_usage
from prompttune.search._proposer import MAX_INSTRUCTION_CHARS, InstructionProposer
from prompttune.search._protocols import ChatModel, Embedder, ResponseCache, SearchObserver
from prompttune.search._render import prompt_token_count, render_messages
from prompttune.search._stats import make_score, paired_bootstrap_lower_bound
from prompttune.search._types import (
    BudgetUsed,
    DatasetSplits,
    DemoLayout,
    Estimate,
    Evaluation,
    Example,
    ExampleResult,
    InstructionPlacement,
    NewBest,
    PhaseChanged,
    Prompt,
    PromptFormat,
    PromptScores,
    SearchConfig,
    SearchEvent,
    SearchResult,
    TaskSpec,
    TrialFinished,
    Usage,
)
from prompttune.search._validate import validate_splits, validate_task

log = structlog.get_logger(__name__)

# The search phase may use this share of the wall budget; the rest is kept for promotion.
SEARCH_WALL_SHARE = 0.75
MAX_FAILED_SHARE = 0.5
COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


@dataclass(frozen=True)
class RunnerDeps:
    """Everything a `Runner` talks to, passed in by the service (or the tests)."""

    task_model: ChatModel
    proposer_model: ChatModel
    embedder: Embedder
    observer: SearchObserver
    cache: ResponseCache | None = None
    task_temperature: float = 0.0
    task_max_tokens: int = 32
    proposer_max_tokens: int = 80
    task_max_concurrency: int = 4
    proposer_max_concurrency: int = 2
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space: candidate indices and format choices."""

    instruction: int = 0
    demo_set: int = 0
    n_demos: int = 0
    placement: InstructionPlacement = InstructionPlacement.SYSTEM
    layout: DemoLayout = DemoLayout.CHAT_TURNS
    answer_prefix: str = ""

    def params(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "demo_set": self.demo_set,
            "n_demos": self.n_demos,
            "placement": self.placement.value,
            "layout": self.layout.value,
            "answer_prefix": self.answer_prefix,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialConfig:
        return cls(
            instruction=int(params["instruction"]),
            demo_set=int(params["demo_set"]),
            n_demos=int(params["n_demos"]),
            placement=InstructionPlacement(params["placement"]),
            layout=DemoLayout(params["layout"]),
            answer_prefix=str(params["answer_prefix"]),
        )

    def describe(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self.params().items())


BASELINE = TrialConfig()
PromptKey = tuple[int, tuple[str, ...], str, str, str]


@dataclass
class TrialRecord:
    """Our own record of one trial; `scored` is the rung reached (examples scored)."""

    number: int
    config: TrialConfig
    key: PromptKey
    prompt: Prompt
    results: list[ExampleResult] = field(default_factory=list)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    state: str = COMPLETE
    duplicate_of: int | None = None

    @property
    def scored(self) -> int:
        return len(self.results)

    @property
    def score(self) -> float:
        values = [r.score for r in self.results if not r.error]
        return sum(values) / len(values) if values else 0.0

    def failed_share(self) -> float:
        failed = sum(1 for r in self.results if r.error)
        return failed / len(self.results) if self.results else 0.0


@dataclass(frozen=True)
class Finalist:
    key: PromptKey
    prompt: Prompt
    evaluation: Evaluation


@dataclass
class SearchState:
    """All mutable state of one `Runner.run` call."""

    task: TaskSpec
    data: DatasetSplits
    config: SearchConfig
    budget: Budget
    task_gateway: LLMGateway
    proposer_gateway: LLMGateway
    settings: CallSettings
    val_order: tuple[Example, ...]
    rungs: tuple[int, ...]
    instructions: tuple[str, ...] = ()
    demo_sets: tuple[DemoSet, ...] = ()
    records: list[TrialRecord] = field(default_factory=list)
    by_key: dict[PromptKey, TrialRecord] = field(default_factory=dict)
    best: TrialRecord | None = None
    stop_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def usage(self) -> Usage:
        return add_usage(self.task_gateway.usage(), self.proposer_gateway.usage())


def minibatch_rungs(minibatch_size: int, total: int) -> tuple[int, ...]:
    """Example counts of the growing minibatches: m, 2m, 4m, ... capped at `total`."""
    rungs: list[int] = []
    size = max(1, minibatch_size)
    while size < total:
        rungs.append(size)
        size *= 2
    rungs.append(total)
    return tuple(rungs)


def pareto_front(scores: list[PromptScores]) -> tuple[PromptScores, ...]:
    """Prompts not dominated on (validation mean up, prompt tokens down), shortest first."""
    front = [
        s
        for s in scores
        if not any(
            o.validation.mean >= s.validation.mean
            and o.prompt_tokens <= s.prompt_tokens
            and (o.validation.mean > s.validation.mean or o.prompt_tokens < s.prompt_tokens)
            for o in scores
        )
    ]
    return tuple(sorted(front, key=lambda s: (s.prompt_tokens, -s.validation.mean)))


def estimate(
    task: TaskSpec,
    data: DatasetSplits,
    config: SearchConfig,
    task_max_tokens: int = 32,
    proposer_max_tokens: int = 80,
) -> Estimate:
    """Upper bound of the LLM calls and tokens a job can send, capped by its budget.

    Raises `InvalidArgument` like `Runner.run` for an invalid task or dataset.
    """
    validate_task(task)
    validate_splits(task, data)
    n_val, n_test = len(data.validation), len(data.test)
    proposals = max(0, config.num_instruction_candidates)
    calls = proposals + (config.max_trials + config.num_finalists + 1) * n_val + 2 * n_test
    if config.max_llm_calls:
        calls = min(calls, config.max_llm_calls)
    widest = Prompt(
        instruction=task.seed_instruction + " " * MAX_INSTRUCTION_CHARS,
        demos=tuple(sorted(data.train, key=lambda ex: -len(str(ex.inputs))))[: config.max_demos],
        format=PromptFormat(answer_prefix=f"{task.output_name.capitalize()}:"),
        input_fields=task.input_fields,
        output_name=task.output_name,
    )
    longest = max((*data.validation, *data.test), key=lambda ex: len(str(ex.inputs)))
    chars = sum(len(m.content) for m in render_messages(widest, longest.inputs))
    tokens = calls * estimate_call_tokens(chars, max(task_max_tokens, proposer_max_tokens))
    if config.max_tokens:
        tokens = min(tokens, config.max_tokens)
    return Estimate(calls, tokens)


class Runner:
    """Runs one search job. Not thread-safe; one `run` at a time per instance.

    `storage` is an Optuna storage (object or URL); None keeps the study in memory.
    """

    def __init__(self, deps: RunnerDeps, storage: optuna.storages.BaseStorage | str | None = None):
        self._deps = deps
        self._storage = storage

    # ----------------------------------------------------------------- entry points

    async def run(
        self, task: TaskSpec, data: DatasetSplits, config: SearchConfig, study_name: str
    ) -> SearchResult:
        """Search for the best prompt. Raises `InvalidArgument`, `SearchCancelled`, and
        `BudgetExceeded` only when not even the baseline can be validated."""
        validate_task(task)
        validate_splits(task, data)
        state = self._new_state(task, data, config)
        self._emit(PhaseChanged("proposing"))
        await self._propose(state)
        self._emit(PhaseChanged("searching"))
        await self._search(state, study_name)
        state.budget.release_held_calls()
        self._emit(PhaseChanged("validating"))
        finalists = await self._validate_finalists(state)
        self._emit(PhaseChanged("testing"))
        result = await self._conclude(state, finalists)
        self._emit(BudgetUsed(result.usage))
        log.info("search.done", stop_reason=result.stop_reason, improved=result.improved)
        return result

    def estimate(self, task: TaskSpec, data: DatasetSplits, config: SearchConfig) -> Estimate:
        """`estimate` with this runner's answer caps."""
        deps = self._deps
        return estimate(task, data, config, deps.task_max_tokens, deps.proposer_max_tokens)

    # ----------------------------------------------------------------- setup

    def _new_state(self, task: TaskSpec, data: DatasetSplits, config: SearchConfig) -> SearchState:
        deps = self._deps
        budget = Budget(
            config.max_llm_calls, config.max_tokens, config.max_wall_seconds, deps.clock
        )
        finals = (config.num_finalists + 1) * len(data.validation) + 2 * len(data.test)
        budget.hold_calls(finals)  # the search phase must not starve promotion and testing
        cache, use_cache = deps.cache, config.use_cache
        val_order = list(sorted(data.validation, key=lambda ex: ex.id))
        random.Random(f"{config.seed}:validation").shuffle(val_order)
        return SearchState(
            task=task,
            data=data,
            config=config,
            budget=budget,
            task_gateway=LLMGateway(
                deps.task_model, budget, cache, deps.task_max_concurrency, use_cache
            ),
            proposer_gateway=LLMGateway(
                deps.proposer_model, budget, cache, deps.proposer_max_concurrency, use_cache
            ),
            settings=CallSettings(deps.task_temperature, deps.task_max_tokens, config.seed),
            val_order=tuple(val_order),
            rungs=minibatch_rungs(config.minibatch_size, len(val_order)),
        )

    async def _propose(self, state: SearchState) -> None:
        config, train = state.config, state.data.train
        proposer = InstructionProposer(state.proposer_gateway, self._deps.proposer_max_tokens)
        state.instructions = await proposer.propose(
            state.task, train, config.num_instruction_candidates, config.seed
        )
        state.demo_sets = build_demo_sets(
            state.task,
            train,
            self._deps.embedder,
            config.num_demo_sets,
            config.max_demos,
            config.seed,
        )
        log.info(
            "search.candidates",
            instructions=len(state.instructions),
            demo_sets=len(state.demo_sets),
        )

    # ----------------------------------------------------------------- search phase

    def _create_study(self, state: SearchState, study_name: str) -> optuna.Study:
        config = state.config
        sampler = optuna.samplers.TPESampler(
            seed=config.seed, n_startup_trials=max(3, min(10, config.max_trials // 3))
        )
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=state.rungs[0], reduction_factor=2
        )
        study = optuna.create_study(
            study_name=study_name,
            storage=self._storage,
            load_if_exists=True,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
        )
        if not study.trials:
            study.enqueue_trial(BASELINE.params())
        return study

    def _distributions(self, state: SearchState) -> dict[str, BaseDistribution]:
        max_demos = max((len(ds.examples) for ds in state.demo_sets), default=0)
        prefix = f"{state.task.output_name.capitalize()}:"
        return {
            "instruction": IntDistribution(0, len(state.instructions) - 1),
            "demo_set": IntDistribution(0, max(0, len(state.demo_sets) - 1)),
            "n_demos": IntDistribution(0, max_demos),
            "placement": CategoricalDistribution([p.value for p in InstructionPlacement]),
            "layout": CategoricalDistribution([d.value for d in DemoLayout]),
            "answer_prefix": CategoricalDistribution(["", prefix]),
        }

    def _space_size(self, state: SearchState) -> int:
        ids = [tuple(ex.id for ex in ds.examples) for ds in state.demo_sets]
        prefixes = {demo_ids[:k] for demo_ids in ids for k in range(1, len(demo_ids) + 1)}
        formats = len(InstructionPlacement) * 2
        return len(state.instructions) * formats * (1 + len(DemoLayout) * len(prefixes))

    async def _search(self, state: SearchState, study_name: str) -> None:
        study = self._create_study(state, study_name)
        distributions = self._distributions(state)
        space = self._space_size(state)
        while not state.stop_reason:
            state.stop_reason = self._stop_reason(state, space)
            if state.stop_reason:
                break
            trial = study.ask(distributions)
            try:
                record = await self._run_trial(state, trial)
            except BudgetExceeded as error:
                study.tell(trial, state=TrialState.FAIL)
                state.stop_reason = error.limit
                break
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            self._tell(study, trial, record)
            self._record(state, record)

    def _stop_reason(self, state: SearchState, space: int) -> str:
        if self._deps.observer.cancelled():
            raise SearchCancelled("search cancelled")
        budget, config = state.budget, state.config
        if len(state.records) >= config.max_trials:
            return "max_trials"
        if (
            config.max_wall_seconds
            and budget.elapsed() >= SEARCH_WALL_SHARE * config.max_wall_seconds
        ):
            return "max_wall_seconds"
        if budget.calls_available() == 0:
            return "max_llm_calls"
        if len(state.by_key) >= space:
            return "search_space_exhausted"
        return ""

    def _prompt_for(self, state: SearchState, config: TrialConfig) -> tuple[PromptKey, Prompt]:
        demos: tuple[Example, ...] = ()
        if state.demo_sets and config.n_demos:
            demos = state.demo_sets[config.demo_set].examples[: config.n_demos]
        layout = config.layout if demos else DemoLayout.CHAT_TURNS
        task = state.task
        prompt = Prompt(
            instruction=state.instructions[config.instruction],
            demos=demos,
            format=PromptFormat(config.placement, layout, config.answer_prefix),
            input_fields=task.input_fields,
            output_name=task.output_name,
            labels=task.labels,
        )
        ids = tuple(demo.id for demo in demos)
        key = (config.instruction, ids, layout.value, config.placement.value, config.answer_prefix)
        return key, prompt

    async def _run_trial(self, state: SearchState, trial: Trial) -> TrialRecord:
        config = TrialConfig.from_params(trial.params)
        key, prompt = self._prompt_for(state, config)
        previous = state.by_key.get(key)
        if previous is not None:
            return self._duplicate(trial.number, config, previous)
        record = TrialRecord(trial.number, config, key, prompt)
        state.by_key[key] = record
        for size in state.rungs:
            await self._score_rung(state, record, size)
            if record.failed_share() > MAX_FAILED_SHARE:
                record.state = FAILED
                break
            record.intermediate.append((size, record.score))
            trial.report(record.score, size)
            if size < len(state.val_order) and trial.should_prune():
                record.state = PRUNED
                break
        return record

    async def _score_rung(self, state: SearchState, record: TrialRecord, size: int) -> None:
        if self._deps.observer.cancelled():
            raise SearchCancelled("search cancelled")
        batch = state.val_order[record.scored : size]
        results = await score_examples(
            state.task_gateway, state.task, record.prompt, batch, state.settings
        )
        record.results.extend(results)

    @staticmethod
    def _duplicate(number: int, config: TrialConfig, previous: TrialRecord) -> TrialRecord:
        return TrialRecord(
            number,
            config,
            previous.key,
            previous.prompt,
            list(previous.results),
            list(previous.intermediate),
            previous.state,
            duplicate_of=previous.number,
        )

    @staticmethod
    def _tell(study: optuna.Study, trial: Trial, record: TrialRecord) -> None:
        if record.duplicate_of is not None:
            for step, value in record.intermediate:
                trial.report(value, step)
        if record.state == COMPLETE:
            study.tell(trial, record.score)
        elif record.state == PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)

    def _record(self, state: SearchState, record: TrialRecord) -> None:
        state.records.append(record)
        self._emit(
            TrialFinished(
                record.number,
                record.score,
                record.scored,
                record.state == PRUNED,
                record.config.describe(),
            )
        )
        log.info(
            "search.trial.completed",
            trial=record.number,
            score=round(record.score, 4),
            examples=record.scored,
            state=record.state,
            duplicate_of=record.duplicate_of,
        )
        best = state.best
        if record.state == COMPLETE and (best is None or record.score > best.score):
            state.best = record
            self._emit(NewBest(record.number, record.score))
        self._emit(BudgetUsed(state.usage()))

    # ----------------------------------------------------------------- validation and test

    def _finalist_records(self, state: SearchState) -> list[TrialRecord]:
        usable = [r for r in state.by_key.values() if r.state != FAILED]
        ranked = sorted(usable, key=lambda r: (-r.scored, -r.score, r.number))
        return ranked[: state.config.num_finalists]

    async def _full_validation(
        self, state: SearchState, key: PromptKey, prompt: Prompt
    ) -> Evaluation:
        record = state.by_key.get(key)
        done = list(record.results) if record is not None else []
        rest = state.val_order[len(done) :]
        done.extend(
            await score_examples(state.task_gateway, state.task, prompt, rest, state.settings)
        )
        score = make_score(state.task, state.val_order, done, state.config.seed)
        return Evaluation(score, tuple(done))

    async def _validate_finalists(self, state: SearchState) -> list[Finalist]:
        baseline_key, baseline_prompt = self._prompt_for(state, BASELINE)
        candidates = [(baseline_key, baseline_prompt)] + [
            (r.key, r.prompt) for r in self._finalist_records(state) if r.key != baseline_key
        ]
        finalists: list[Finalist] = []
        for key, prompt in candidates:
            try:
                evaluation = await self._full_validation(state, key, prompt)
            except BudgetExceeded as error:
                if not finalists:
                    raise
                state.notes.append(f"validation stopped early ({error.limit})")
                break
            finalists.append(Finalist(key, prompt, evaluation))
        return finalists

    def _improvement(
        self, state: SearchState, winner: Finalist, baseline: Finalist
    ) -> tuple[bool, str]:
        if winner is baseline:
            return False, "no candidate beat the baseline on validation"
        ours = {r.example_id: r for r in winner.evaluation.results if not r.error}
        theirs = {r.example_id: r for r in baseline.evaluation.results if not r.error}
        shared = sorted(set(ours) & set(theirs))
        lower = paired_bootstrap_lower_bound(
            [ours[i].score for i in shared], [theirs[i].score for i in shared], state.config.seed
        )
        gain = winner.evaluation.score.mean - baseline.evaluation.score.mean
        if lower <= 0:
            return False, (
                f"best candidate gained {gain:+.3f} on validation, but the paired bootstrap "
                f"95% lower bound {lower:+.3f} is not above 0; keeping the baseline"
            )
        return True, f"validation {gain:+.3f} over the baseline (95% lower bound {lower:+.3f})"

    async def _test_score(self, state: SearchState, prompt: Prompt) -> Evaluation | None:
        if not state.data.test:
            return None
        try:
            results = await score_examples(
                state.task_gateway, state.task, prompt, state.data.test, state.settings
            )
        except BudgetExceeded as error:
            state.notes.append(f"test scoring skipped ({error.limit})")
            return None
        return Evaluation(
            make_score(state.task, state.data.test, results, state.config.seed), results
        )

    async def _conclude(self, state: SearchState, finalists: list[Finalist]) -> SearchResult:
        baseline = finalists[0]
        winner = max(
            finalists,
            key=lambda f: (f.evaluation.score.mean, f is baseline, -prompt_token_count(f.prompt)),
        )
        improved, summary = self._improvement(state, winner, baseline)
        best = winner if improved else baseline
        baseline_test = await self._test_score(state, baseline.prompt)
        best_test = await self._test_score(state, best.prompt) if improved else baseline_test
        if (
            improved
            and baseline_test
            and best_test
            and best_test.score.mean < baseline_test.score.mean
        ):
            summary += "; note: worse than the baseline on test"
        tests = {baseline.key: baseline_test, best.key: best_test}
        validated = [self._prompt_scores(f, tests.get(f.key)) for f in finalists]
        return SearchResult(
            baseline=self._prompt_scores(baseline, baseline_test),
            best=self._prompt_scores(best, best_test),
            improved=improved,
            summary="; ".join([summary, *state.notes]),
            usage=state.usage(),
            trials_completed=sum(1 for r in state.records if r.state == COMPLETE),
            trials_pruned=sum(1 for r in state.records if r.state == PRUNED),
            wall_seconds=state.budget.elapsed(),
            stop_reason=state.stop_reason,
            pareto=pareto_front(validated),
        )

    @staticmethod
    def _prompt_scores(finalist: Finalist, test: Evaluation | None) -> PromptScores:
        return PromptScores(
            prompt=finalist.prompt,
            validation=finalist.evaluation.score,
            test=test.score if test is not None else None,
            prompt_tokens=prompt_token_count(finalist.prompt),
        )

    def _emit(self, event: SearchEvent) -> None:
        self._deps.observer.on_event(event)
