"""The search runner: propose candidates, search them with Optuna ask/tell, promote, report.

Phases: "proposing" (dataset summary, instruction candidates, demo sets including a
bootstrapped set paid through the task gateway), "searching" (one Optuna trial per prompt
configuration, scored on growing minibatches of the validation split and pruned by
successive halving), "reflecting" once after half the trials (the proposer sees the best
instructions with their scores and the current best's mistakes; usable new instructions
join the space), "validating" (the best few and the baseline on the full validation split;
the winner is chosen here) and "testing" (baseline and winner on the test split).

Multi-objective runs (`SearchSpec.multi_objective`) maximise the minibatch score and
minimise prompt tokens with a multi-objective TPE sampler. Optuna cannot prune
multi-objective trials, so each trial is scored on the first rung only; the minibatch
Pareto front is then promoted to full validation and the result's Pareto set is computed on
validation scores.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
import structlog
from optuna.distributions import BaseDistribution
from optuna.trial import Trial, TrialState

from prompttune.contract import (
    BudgetUsed,
    Estimate,
    JobResult,
    Metric,
    NewBest,
    PhaseChanged,
    Prompt,
    PromptFormat,
    SearchEvent,
    SearchSpec,
    TaskSpec,
    TrialFinished,
    Usage,
    prompt_token_count,
    render,
)
from prompttune.search._budget import (
    BudgetCaps,
    CallBudget,
    estimate_call_tokens,
    share_is_empty,
    shared_caps,
)
from prompttune.search._demos import (
    DemoSet,
    bootstrap_candidates,
    bootstrapped_demo_set,
    build_demo_sets,
    knn_demo_set,
)
from prompttune.search._errors import BudgetExceeded, SearchCancelled
from prompttune.search._evaluate import CallSettings, score_examples
from prompttune.search._finalize import (
    conclude,
    finalist_count,
    finalist_records,
    validate_finalists,
)
from prompttune.search._flow import GatewayRegistry
from prompttune.search._gateway import EndpointPolicy, LLMGateway, UsageLedger, add_usage
from prompttune.search._proposer import (
    MAX_INSTRUCTION_CHARS,
    InstructionProposer,
    Mistake,
    ProposerSettings,
    ScoredInstruction,
)
from prompttune.search._protocols import ChatModel, Embedder, ResponseCache, SearchObserver
from prompttune.search._resume import (
    DUPLICATE_ATTR,
    INSTRUCTIONS_ATTR,
    OVER_CAP_ATTR,
    RUNNER_ATTR,
    SEARCH_CLOSED_ATTR,
    helper_usages,
    interrupted_trials,
    load_record,
    load_usage,
    over_cap,
    save_record,
    save_usage,
    shared_sampler,
    taken_trials,
    trial_sampler,
    usage_attr,
)
from prompttune.search._scorers import build_scorer, calls_per_example
from prompttune.search._space import BASELINE, REASONING_MAX_TOKENS, SearchSpace, TrialConfig
from prompttune.search._state import (
    COMPLETE,
    FAILED,
    PRUNED,
    SearchState,
    TrialRecord,
    minibatch_rungs,
)
from prompttune.search._types import DatasetSplits
from prompttune.search._validate import validate_splits, validate_task

log = structlog.get_logger(__name__)

# The search phase may use this share of the wall budget; the rest is kept for promotion.
SEARCH_WALL_SHARE = 0.75
MAX_FAILED_SHARE = 0.5
# Instructions shown to the reflection round, and mistakes of the current best offered to it.
REFLECTION_HISTORY = 5
REFLECTION_MISTAKES = 6
# Distributed trials: how long the primary waits for helpers' running trials before it leaves
# the search phase (twice the slowest trial so far, within these bounds), and how often it looks.
HELPER_WAIT_SECONDS = (1.0, 60.0)
HELPER_POLL_SECONDS = 0.2


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
    # Process-wide flow control shared by all jobs, and per-endpoint limits and prices.
    registry: GatewayRegistry | None = None
    task_policy: EndpointPolicy | None = None
    proposer_policy: EndpointPolicy | None = None
    # Grades answers when the task's metric is llm_judge (role "judge").
    judge_model: ChatModel | None = None
    judge_policy: EndpointPolicy | None = None
    judge_max_concurrency: int = 4


@dataclass(frozen=True)
class JobGateways:
    """The gateways of one job; they share its budget and usage ledger."""

    task: LLMGateway
    proposer: LLMGateway
    judge: LLMGateway | None
    ledger: UsageLedger


def job_gateways(deps: RunnerDeps, budget: CallBudget, use_cache: bool) -> JobGateways:
    """Task, proposer and (for llm_judge) judge gateways sharing `budget` and one ledger."""
    ledger = UsageLedger()
    roles = [
        (deps.task_model, deps.task_max_concurrency, deps.task_policy),
        (deps.proposer_model, deps.proposer_max_concurrency, deps.proposer_policy),
        (deps.judge_model, deps.judge_max_concurrency, deps.judge_policy),
    ]
    task, proposer, judge = (
        None
        if model is None
        else LLMGateway(
            model,
            budget,
            deps.cache,
            concurrency,
            use_cache,
            policy=policy,
            registry=deps.registry,
            ledger=ledger,
        )
        for model, concurrency, policy in roles
    )
    assert task is not None and proposer is not None
    return JobGateways(task, proposer, judge, ledger)


def reasoning_max_tokens(config: SearchSpec, task_max_tokens: int, validation: int) -> int:
    """Answer cap of reasoning prompts: max(task cap, 256), bounded by a token budget so
    that the answers of one full validation pass take at most a quarter of it (never below
    the task cap)."""
    cap = max(task_max_tokens, REASONING_MAX_TOKENS)
    if config.budget.max_tokens:
        cap = min(cap, config.budget.max_tokens // max(1, 4 * validation))
    return max(task_max_tokens, cap)


def reasoning_enabled(task: TaskSpec, config: SearchSpec) -> bool:
    """Reasoning is a search dimension when allowed explicitly, or by default for tasks that
    are not pure classification."""
    if config.allow_reasoning is not None:
        return config.allow_reasoning
    return task.metric is not Metric.LABEL_CHOICE


def _proposer_calls(config: SearchSpec, train: int) -> int:
    proposals = max(0, config.num_instruction_candidates)
    summary = 1 if proposals and train else 0
    return proposals + summary + max(0, config.num_reflection_candidates)


def estimate(
    task: TaskSpec,
    splits: DatasetSplits,
    spec: SearchSpec,
    task_max_tokens: int = 32,
    proposer_max_tokens: int = 80,
) -> Estimate:
    """Upper bound of the LLM calls and tokens a job can send, capped by its budget.

    Raises `InvalidArgument` like `Runner.run` for an invalid task or dataset.
    """
    validate_task(task)
    validate_splits(task, splits)
    n_val, n_test = len(splits.validation), len(splits.test)
    bootstrap = len(bootstrap_candidates(splits.train, spec.max_demos, spec.seed))
    finalists = finalist_count(spec)
    calls = _proposer_calls(spec, len(splits.train))
    calls += calls_per_example(task) * (
        (spec.budget.max_trials + finalists + 1) * n_val + 2 * n_test + bootstrap
    )
    if spec.budget.max_llm_calls:
        calls = min(calls, spec.budget.max_llm_calls)
    widest = Prompt(
        instruction=task.instruction + " " * MAX_INSTRUCTION_CHARS,
        demos=tuple(sorted(splits.train, key=lambda ex: -len(str(ex.inputs))))[: spec.max_demos],
        format=PromptFormat(answer_prefix=f"{task.output_name.capitalize()}:"),
        input_fields=task.input_fields,
        output_name=task.output_name,
    )
    longest = max((*splits.validation, *splits.test), key=lambda ex: len(str(ex.inputs)))
    chars = sum(len(m.content) for m in render(widest, longest.inputs))
    answer = max(task_max_tokens, proposer_max_tokens)
    if reasoning_enabled(task, spec):
        answer = max(answer, reasoning_max_tokens(spec, task_max_tokens, n_val))
    tokens = calls * estimate_call_tokens(chars, answer)
    if spec.budget.max_tokens:
        tokens = min(tokens, spec.budget.max_tokens)
    return Estimate(calls, tokens)


class Runner:
    """Runs one search job. Not thread-safe; one `run` or `assist` at a time per instance.

    `storage` is an Optuna storage (object or URL); None keeps the study in memory.

    Distributed trials (`SearchSpec.parallelism` p > 1): the runner of `run` (the primary)
    runs the whole job; up to p - 1 other runners `assist` it during its search phase, each
    asking and telling trials on the same study (constant-liar TPE) and storing their results
    in the trials, which the primary adopts. Each budget cap's search share is split into p
    parts (see `shared_caps`), so the workers together never exceed the job's budget.
    """

    def __init__(self, deps: RunnerDeps, storage: optuna.storages.BaseStorage | str | None = None):
        self._deps = deps
        # A storage object, not None: the runner re-binds the study to a new sampler per ask.
        self._storage = storage if storage is not None else optuna.storages.InMemoryStorage()

    # ----------------------------------------------------------------- entry points

    async def run(
        self, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec, study_name: str
    ) -> JobResult:
        """Search for the best prompt. Raises `InvalidArgument`, `SearchCancelled`, and
        `BudgetExceeded` only when not even the baseline can be validated."""
        validate_task(task)
        validate_splits(task, splits)
        state = self._new_state(task, splits, spec)
        study = self._create_study(state, study_name)
        self._restore_usage(state, study)
        self._emit(PhaseChanged("proposing"))
        await self._propose(state)
        self._warm_start(state, study)
        self._checkpoint(state, study)
        self._emit(PhaseChanged("searching"))
        await self._search(state, study)
        state.budget.release_held_calls()
        self._emit(PhaseChanged("validating"))
        finalists = await validate_finalists(state)
        self._emit(PhaseChanged("testing"))
        result = await conclude(state, finalists)
        self._emit(BudgetUsed(result.usage))
        log.info("search.done", stop_reason=result.stop_reason, improved=result.improved)
        return result

    async def assist(
        self,
        task: TaskSpec,
        splits: DatasetSplits,
        spec: SearchSpec,
        study_name: str,
        helper_index: int,
        search_open: Callable[[], bool],
    ) -> Usage:
        """Runs trials of another runner's search (the primary's `run` on `study_name`) until
        the study holds max_trials taken trials, `search_open()` turns False or the primary
        closes its search, the search space is exhausted, or this helper's budget share
        (`helper_index` in 1..parallelism-1) runs out. Returns this helper's usage.

        The candidate space is rebuilt like the primary's, from the shared response cache
        (no paid calls); instructions the primary's reflection added are read from the study.
        Call only while the primary is searching. Raises `SearchCancelled` and
        `InvalidArgument`.
        """
        validate_task(task)
        validate_splits(task, splits)
        state = self._new_state(task, splits, spec, helper_index)
        if share_is_empty(self._total_caps(spec), self._caps(task, splits, spec, helper_index)):
            return Usage()
        state.reflected = True  # only the primary reflects; helpers read its instructions
        study = self._create_study(state, study_name)
        self._restore_usage(state, study)
        await self._propose(state)
        self._checkpoint(state, study)
        log.info("search.helper.started", helper=helper_index)
        for frozen in interrupted_trials(study, helper_index):
            self._sync_instructions(state, study, publish=False)
            self._adopt(state, study, emit=False)
            await self._finish_trial(state, study, Trial(study, frozen._trial_id))
        while self._helper_may_ask(state, study, search_open):
            await self._one_shared_trial(state, study)
        self._checkpoint(state, study)
        log.info("search.helper.done", helper=helper_index, trials=len(state.records))
        return state.own_usage()

    def estimate(self, task: TaskSpec, splits: DatasetSplits, spec: SearchSpec) -> Estimate:
        """`estimate` with this runner's answer caps."""
        deps = self._deps
        return estimate(task, splits, spec, deps.task_max_tokens, deps.proposer_max_tokens)

    # ----------------------------------------------------------------- setup

    def _new_state(
        self, task: TaskSpec, data: DatasetSplits, config: SearchSpec, runner_index: int = 0
    ) -> SearchState:
        deps = self._deps
        budget = self._new_budget(task, data, config, runner_index)
        val_order = list(sorted(data.validation, key=lambda ex: ex.id))
        random.Random(f"{config.seed}:validation").shuffle(val_order)
        gateways = job_gateways(deps, budget, not config.disable_cache)
        proposer_settings = ProposerSettings(max_tokens=deps.proposer_max_tokens)
        scorer = build_scorer(task, gateways.judge, deps.embedder)
        return SearchState(
            task=task,
            data=data,
            config=config,
            budget=budget,
            task_gateway=gateways.task,
            proposer_gateway=gateways.proposer,
            ledger=gateways.ledger,
            proposer=InstructionProposer(gateways.proposer, proposer_settings, deps.embedder),
            settings=CallSettings(
                deps.task_temperature, deps.task_max_tokens, config.seed, deps.embedder, scorer
            ),
            val_order=tuple(val_order),
            runner_index=runner_index,
            rungs=minibatch_rungs(config.minibatch_size, len(val_order)),
            reflected=config.num_reflection_candidates <= 0,  # no round to wait for
            space=SearchSpace(
                instructions=(task.instruction,),
                demo_sets=(),
                max_demos=0,
                answer_prefix=f"{task.output_name.capitalize()}:",
                reasoning=reasoning_enabled(task, config),
                reasoning_max_tokens=reasoning_max_tokens(
                    config, deps.task_max_tokens, len(val_order)
                ),
            ),
        )

    def _new_budget(
        self, task: TaskSpec, data: DatasetSplits, config: SearchSpec, runner_index: int
    ) -> CallBudget:
        caps = self._caps(task, data, config, runner_index)
        budget = CallBudget(
            caps.max_llm_calls,
            caps.max_tokens,
            config.budget.max_wall_seconds,
            self._deps.clock,
            max_cost_usd=caps.max_cost_usd,
        )
        if runner_index == 0:
            # the search phase must not starve promotion and testing
            budget.hold_calls(self._final_calls(task, data, config))
        return budget

    @staticmethod
    def _total_caps(config: SearchSpec) -> BudgetCaps:
        return BudgetCaps(
            config.budget.max_llm_calls, config.budget.max_tokens, config.budget.max_cost_usd
        )

    def _caps(
        self, task: TaskSpec, data: DatasetSplits, config: SearchSpec, runner_index: int
    ) -> BudgetCaps:
        """The job's caps (parallelism 1), or this runner's share of them."""
        held = self._final_calls(task, data, config)
        return shared_caps(self._total_caps(config), held, config.parallelism, runner_index)

    @staticmethod
    def _final_reserve(state: SearchState) -> int:
        """The calls promotion and testing still need as the search stands: the unscored
        validation examples of the baseline and of the current finalists, a full validation
        pass for the next trial while finalist places are free, and the test split twice.

        The next trial cannot raise it: finalists rank by examples scored first, so a new
        record only displaces one with fewer examples scored (more left to pay)."""
        n_val = len(state.val_order)
        baseline_key, _ = state.space.prompt_for(state.task, BASELINE)
        finalists = [r for r in finalist_records(state) if r.key != baseline_key]
        baseline = state.by_key.get(baseline_key)
        missing = n_val - (baseline.scored if baseline is not None else 0)
        missing += sum(n_val - record.scored for record in finalists)
        if len(finalists) < finalist_count(state.config):
            missing += n_val
        return calls_per_example(state.task) * (missing + 2 * len(state.data.test))

    @staticmethod
    def _final_calls(task: TaskSpec, data: DatasetSplits, config: SearchSpec) -> int:
        finals = (finalist_count(config) + 1) * len(data.validation) + 2 * len(data.test)
        return calls_per_example(task) * finals

    async def _propose(self, state: SearchState) -> None:
        config, train, space = state.config, state.data.train, state.space
        space.instructions = await state.proposer.propose(
            state.task, train, config.num_instruction_candidates, config.seed
        )
        sets = list(
            build_demo_sets(
                state.task,
                train,
                self._deps.embedder,
                config.num_demo_sets,
                config.max_demos,
                config.seed,
            )
        )
        if config.max_demos > 0:
            bootstrapped = await self._bootstrap(state)
            knn = knn_demo_set(train, config.seed)
            sets.extend(s for s in (bootstrapped, knn) if s is not None)
        space.demo_sets = tuple(sets)
        space.max_demos = max((min(len(s.examples), config.max_demos) for s in sets), default=0)
        log.info(
            "search.candidates",
            instructions=len(space.instructions),
            demo_sets=[s.name for s in sets],
        )

    def _warm_start(self, state: SearchState, study: optuna.Study) -> None:
        """Queues the seed prompt with each demo set (all its demos) right after the baseline:
        demo-only candidates, the strongest lever for small models, are measured first and
        the sampler learns from them. At most all but one of the startup trials, so random
        exploration remains. Idempotent: a resumed run finds them in the study."""
        space = state.space
        count = len(space.demo_sets) if space.max_demos else 0
        configs = [TrialConfig(demo_set=i, n_demos=space.max_demos) for i in range(count)]
        for config in configs[: self._startup_trials(state.config) - 1]:
            study.enqueue_trial(space.params(config), skip_if_exists=True)

    async def _bootstrap(self, state: SearchState) -> DemoSet | None:
        """Train examples the task model answers correctly under the baseline prompt."""
        tried = bootstrap_candidates(state.data.train, state.config.max_demos, state.config.seed)
        _, prompt = state.space.prompt_for(state.task, BASELINE)
        try:
            results = await score_examples(
                state.task_gateway, state.task, prompt, tried, state.settings
            )
        except BudgetExceeded:
            return None
        correct = {r.id for r in results if not r.error and r.score >= 1.0}
        return bootstrapped_demo_set(state.task, tried, correct, state.config.max_demos)

    # ----------------------------------------------------------------- search phase

    @staticmethod
    def _startup_trials(config: SearchSpec) -> int:
        return max(3, min(10, config.budget.max_trials // 3))

    def _create_study(self, state: SearchState, study_name: str) -> optuna.Study:
        config = state.config
        sampler = trial_sampler(config.seed, 0, self._startup_trials(config))
        if config.multi_objective:
            study = optuna.create_study(
                study_name=study_name,
                storage=self._storage,
                load_if_exists=True,
                sampler=sampler,
                directions=["maximize", "minimize"],
            )
        else:
            study = optuna.create_study(
                study_name=study_name,
                storage=self._storage,
                load_if_exists=True,
                sampler=sampler,
                pruner=optuna.pruners.SuccessiveHalvingPruner(
                    min_resource=state.rungs[0], reduction_factor=2
                ),
                direction="maximize",
            )
        if not study.trials:
            study.enqueue_trial(state.space.params(BASELINE))
        return study

    async def _search(self, state: SearchState, study: optuna.Study) -> None:
        if state.config.parallelism > 1:
            await self._search_shared(state, study)
            return
        await self._resume(state, study)
        distributions = state.space.distributions()
        while True:
            if self._reflection_due(state):
                await self._reflect(state, study)
                distributions = state.space.distributions()
            state.budget.hold_calls(self._final_reserve(state))
            state.stop_reason = self._stop_reason(state)
            if state.stop_reason:
                break
            await self._one_trial(state, study, distributions)

    async def _one_trial(
        self, state: SearchState, study: optuna.Study, distributions: dict[str, BaseDistribution]
    ) -> None:
        study.sampler = trial_sampler(
            state.config.seed, len(state.records), self._startup_trials(state.config)
        )
        await self._finish_trial(state, study, study.ask(distributions))

    async def _finish_trial(self, state: SearchState, study: optuna.Study, trial: Trial) -> None:
        try:
            record = await self._run_trial(state, trial)
        except BudgetExceeded as error:
            study.tell(trial, state=TrialState.FAIL)
            state.stop_reason = error.limit
            return
        except SearchCancelled:
            raise  # left RUNNING: a resumed run continues it
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        save_record(trial, record)
        self._tell(state, study, trial, record)
        self._record(state, record)
        self._checkpoint(state, study)

    async def _resume(self, state: SearchState, study: optuna.Study) -> None:
        """Rebuilds the records of trials an earlier process finished (no LLM calls), then
        continues the trials it left running. A fresh study returns at once."""
        by_number: dict[int, TrialRecord] = {}
        for frozen in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if self._reflection_due(state):
                await self._reflect(state, study, enqueue=False)
            record = load_record(frozen, state.space, state.task, by_number)
            if record is not None:
                by_number[record.number] = record
                state.by_key.setdefault(record.key, record)
                self._remember(state, record)
        for frozen in interrupted_trials(study):
            if self._reflection_due(state):
                await self._reflect(state, study, enqueue=False)
            if set(frozen.params) != set(state.space.distributions()):
                # Killed while Optuna was still storing its parameters: nothing ran yet.
                study.tell(frozen.number, state=TrialState.FAIL)
                continue
            log.info("search.trial.resumed", trial=frozen.number)
            # Optuna's FrozenTrial keeps the storage id privately; Trial(study, id) is public.
            await self._finish_trial(state, study, Trial(study, frozen._trial_id))
        if by_number:
            log.info("search.resumed", trials=len(by_number))

    @staticmethod
    def _restore_usage(state: SearchState, study: optuna.Study) -> None:
        """Counts what an earlier process of this job spent against the budget and in the
        reported usage (its calls are in the cache, so none is paid again)."""
        prior = load_usage(study, usage_attr(state.runner_index))
        state.prior_usage = prior
        state.budget.carry_over(prior.llm_calls, prior.tokens, prior.cost_usd)
        state.study = study

    def _stop_reason(self, state: SearchState) -> str:
        if self._deps.observer.cancelled():
            raise SearchCancelled("search cancelled")
        budget, config = state.budget, state.config
        if state.stop_reason:
            return state.stop_reason
        if self._trials_taken(state) >= config.budget.max_trials:
            return "max_trials"
        if (
            config.budget.max_wall_seconds
            and budget.elapsed() >= SEARCH_WALL_SHARE * config.budget.max_wall_seconds
        ):
            return "max_wall_seconds"
        available = budget.calls_available()
        if available is not None and available < calls_per_example(state.task) * state.rungs[0]:
            return "max_llm_calls"  # not even the first minibatch of another trial fits
        exhausted = len(state.by_key) >= state.space.size()
        if exhausted and (state.reflected or state.best is None):
            return "search_space_exhausted"
        return ""

    def _trial_rungs(self, state: SearchState) -> tuple[int, ...]:
        # Multi-objective studies cannot prune: one rung per trial keeps them affordable.
        return state.rungs[:1] if state.config.multi_objective else state.rungs

    async def _run_trial(self, state: SearchState, trial: Trial) -> TrialRecord:
        config = TrialConfig.from_params(trial.params)
        key, prompt = state.space.prompt_for(state.task, config)
        previous = state.by_key.get(key)
        if previous is not None:
            return self._duplicate(trial.number, config, previous)
        record = TrialRecord(trial.number, config, key, prompt)
        state.by_key[key] = record
        multi = state.config.multi_objective
        for size in self._trial_rungs(state):
            await self._score_rung(state, record, size)
            if record.failed_share() > MAX_FAILED_SHARE:
                record.state = FAILED
                break
            record.intermediate.append((size, record.score))
            if multi:
                continue
            trial.report(record.score, size)
            if size < len(state.val_order) and trial.should_prune():
                record.state = PRUNED
                break
        return record

    async def _score_rung(self, state: SearchState, record: TrialRecord, size: int) -> None:
        if self._deps.observer.cancelled():
            raise SearchCancelled("search cancelled")
        batch = state.val_order[record.scored : size]
        settings = state.space.call_settings(record.prompt, state.settings)
        results = await score_examples(
            state.task_gateway, state.task, record.prompt, batch, settings
        )
        record.results.extend(results)
        if state.study is not None:
            self._checkpoint(state, state.study)  # a crash loses at most one rung's accounting

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
    def _tell(state: SearchState, study: optuna.Study, trial: Trial, record: TrialRecord) -> None:
        if state.config.multi_objective:
            if record.state == COMPLETE:
                study.tell(trial, [record.score, float(prompt_token_count(record.prompt))])
            else:
                study.tell(trial, state=TrialState.FAIL)
            return
        if record.duplicate_of is not None:
            for step, value in record.intermediate:
                trial.report(value, step)
        if record.state == COMPLETE:
            study.tell(trial, record.score)
        elif record.state == PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)

    @staticmethod
    def _remember(state: SearchState, record: TrialRecord) -> bool:
        """Adds the record; True when it is the new best."""
        state.records.append(record)
        best = state.best
        if record.state == COMPLETE and (best is None or record.score > best.score):
            state.best = record
            return True
        return False

    def _record(self, state: SearchState, record: TrialRecord) -> None:
        new_best = self._remember(state, record)
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
        if new_best:
            self._emit(NewBest(record.number, record.score))
        self._emit(BudgetUsed(state.usage()))

    # ----------------------------------------------------------------- distributed trials

    @staticmethod
    def _checkpoint(state: SearchState, study: optuna.Study) -> None:
        """Stores this runner's own usage in the study (helpers each under their index)."""
        save_usage(study, state.own_usage(), usage_attr(state.runner_index))

    @staticmethod
    def _trials_taken(state: SearchState) -> int:
        if state.config.parallelism > 1 and state.study is not None:
            return len(taken_trials(state.study))  # every worker's, running ones included
        return len(state.records)

    async def _search_shared(self, state: SearchState, study: optuna.Study) -> None:
        """The primary's search phase when helpers may join: adopt the trials they finished
        before every decision, close the search, wait (bounded) for their running trials."""
        self._sync_instructions(state, study, publish=True)
        self._adopt(state, study, emit=False)  # a restarted primary: every finished trial
        for frozen in interrupted_trials(study, state.runner_index):
            log.info("search.trial.resumed", trial=frozen.number)
            await self._finish_trial(state, study, Trial(study, frozen._trial_id))
        while True:
            self._adopt(state, study)
            if self._reflection_due(state):
                await self._reflect(state, study)
            state.stop_reason = self._stop_reason(state)
            if state.stop_reason:
                break
            await self._one_shared_trial(state, study)
        study.set_user_attr(SEARCH_CLOSED_ATTR, True)
        await self._await_helpers(state, study)

    async def _one_shared_trial(self, state: SearchState, study: optuna.Study) -> None:
        config = state.config
        study.sampler = shared_sampler(
            config.seed, state.runner_index, len(state.records), self._startup_trials(config)
        )
        trial = study.ask(state.space.distributions())
        trial.set_user_attr(RUNNER_ATTR, state.runner_index)
        if over_cap(study, trial, config.budget.max_trials):
            trial.set_user_attr(OVER_CAP_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            return
        await self._finish_trial(state, study, trial)

    @staticmethod
    def _sync_instructions(state: SearchState, study: optuna.Study, publish: bool) -> None:
        """Takes the study's instruction table when it is longer (the primary reflected);
        otherwise, with `publish`, stores ours there."""
        shared = study.user_attrs.get(INSTRUCTIONS_ATTR)
        if isinstance(shared, list) and len(shared) > len(state.space.instructions):
            state.space.instructions = tuple(str(text) for text in shared)
            state.reflected = True
        elif publish:
            study.set_user_attr(INSTRUCTIONS_ATTR, list(state.space.instructions))

    def _adopt(self, state: SearchState, study: optuna.Study, emit: bool = True) -> None:
        """Adds the trials other runners finished (no LLM calls), reporting them with `emit`,
        and refreshes the helpers' usage."""
        by_number = {record.number: record for record in state.records}
        # Originals before duplicates: a duplicate may name an original that finished later.
        trials = study.get_trials(deepcopy=False)
        for frozen in sorted(trials, key=lambda t: (DUPLICATE_ATTR in t.user_attrs, t.number)):
            if frozen.number in by_number:
                continue
            try:
                record = load_record(frozen, state.space, state.task, by_number)
            except (KeyError, IndexError):
                continue  # its original or its instruction is not known here yet
            if record is None:
                continue
            by_number[record.number] = record
            state.by_key.setdefault(record.key, record)
            if emit:
                self._record(state, record)
            else:
                self._remember(state, record)
        if state.runner_index == 0:
            state.helper_usage = add_usage(*helper_usages(study))

    def _helper_may_ask(
        self, state: SearchState, study: optuna.Study, search_open: Callable[[], bool]
    ) -> bool:
        if self._deps.observer.cancelled():
            raise SearchCancelled("search cancelled")
        if not search_open() or study.user_attrs.get(SEARCH_CLOSED_ATTR):
            return False
        self._sync_instructions(state, study, publish=False)
        self._adopt(state, study, emit=False)
        state.stop_reason = self._stop_reason(state)
        return not state.stop_reason

    async def _await_helpers(self, state: SearchState, study: optuna.Study) -> None:
        """Waits for the helpers' running trials (at most twice the slowest trial so far,
        within HELPER_WAIT_SECONDS), then adopts what they finished. Uses wall time."""
        deadline = time.monotonic() + self._helper_wait(study)
        running = (TrialState.RUNNING,)
        while study.get_trials(deepcopy=False, states=running) and time.monotonic() < deadline:
            if self._deps.observer.cancelled():
                raise SearchCancelled("search cancelled")
            await asyncio.sleep(HELPER_POLL_SECONDS)
        self._adopt(state, study)

    @staticmethod
    def _helper_wait(study: optuna.Study) -> float:
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=finished)
            if t.datetime_complete is not None and t.datetime_start is not None
        ]
        low, high = HELPER_WAIT_SECONDS
        return min(high, max(low, 2 * max(durations, default=high)))

    # ----------------------------------------------------------------- reflection round

    @staticmethod
    def _reflection_due(state: SearchState) -> bool:
        if state.reflected or state.best is None:
            return False
        halfway = max(1, state.config.budget.max_trials // 2)
        return len(state.records) >= halfway or len(state.by_key) >= state.space.size()

    async def _reflect(self, state: SearchState, study: optuna.Study, enqueue: bool = True) -> None:
        """Asks for improved instructions and enqueues each new one in the current best's
        configuration, so every reflected candidate is scored at least once. A resumed run
        repeats the round (from the cache) without enqueuing: the study already holds those
        trials."""
        state.reflected = True
        self._emit(PhaseChanged("reflecting"))
        added = await state.proposer.reflect(
            state.task,
            state.data.train,
            self._tried_instructions(state),
            self._mistakes(state),
            state.space.instructions,
            state.config.num_reflection_candidates,
            state.config.seed,
        )
        first = len(state.space.instructions)
        state.space.instructions = state.space.instructions + added
        best = state.best.config if state.best is not None else BASELINE
        if state.config.parallelism > 1:
            self._sync_instructions(state, study, publish=True)  # before helpers ask for them
        for index in range(first, len(state.space.instructions) if enqueue else first):
            study.enqueue_trial(state.space.params(replace(best, instruction=index)))
        self._checkpoint(state, study)  # the round's proposer calls survive a crash
        log.info("search.reflected", added=len(added), instructions=len(state.space.instructions))
        self._emit(PhaseChanged("searching"))

    @staticmethod
    def _tried_instructions(state: SearchState) -> list[ScoredInstruction]:
        deepest: dict[int, TrialRecord] = {}
        for record in state.by_key.values():
            if record.state == FAILED or not record.scored:
                continue
            index = record.config.instruction
            known = deepest.get(index)
            if known is None or (record.scored, record.score) > (known.scored, known.score):
                deepest[index] = record
        tried = [
            ScoredInstruction(state.space.instructions[i], r.score, r.scored)
            for i, r in sorted(deepest.items())
        ]
        return sorted(tried, key=lambda t: -t.score)[:REFLECTION_HISTORY]

    @staticmethod
    def _mistakes(state: SearchState) -> list[Mistake]:
        if state.best is None:
            return []
        examples = {ex.id: ex for ex in state.val_order}
        wrong = [r for r in state.best.results if not r.error and r.score < 1.0]
        return [Mistake(examples[r.id], r.answer) for r in wrong][:REFLECTION_MISTAKES]

    def _emit(self, event: SearchEvent) -> None:
        self._deps.observer.on_event(event)
