"""prompttune.search: the prompt optimisation engine (no gRPC, no generated code).

`Runner` searches instructions, demonstration sets and prompt formats with Optuna ask/tell
over an `LLMGateway` (cache -> budget -> concurrency limit -> `ChatModel`), and returns a
`prompttune.contract.JobResult` with baseline and best scores on validation and test, or
raises `SearchCancelled` / `SearchFailed` carrying the best found so far (partial).

The API's concepts (tasks, examples, prompts, scores, results, events) and the renderer are
`prompttune.contract`'s; this package exports only the engine's own names.
"""

from prompttune.search._budget import CallBudget, Reservation, estimate_call_tokens
from prompttune.search._compare import paired_difference
from prompttune.search._demos import DemoSet, build_demo_sets
from prompttune.search._embed import SentenceTransformerEmbedder, minilm_model_dir
from prompttune.search._errors import (
    BudgetExceeded,
    EndpointFailing,
    FailedPrecondition,
    InvalidArgument,
    LLMCallFailed,
    NotFound,
    PromptTuneError,
    SearchCancelled,
    SearchFailed,
    UpstreamUnavailable,
)
from prompttune.search._estimate import estimate, final_calls
from prompttune.search._evaluate import CallSettings, evaluate_prompt, score_examples
from prompttune.search._failures import MAX_FAILURES_WITHOUT_SUCCESS, FailureTally
from prompttune.search._flow import (
    ConcurrencyLimit,
    EndpointControl,
    EndpointHealth,
    EndpointLimits,
    GatewayRegistry,
    TokenBucket,
)
from prompttune.search._gateway import (
    MAX_ANSWER_CHARS,
    EndpointPolicy,
    GatewayFactory,
    LLMGateway,
    Pricing,
    UsageLedger,
    add_usage,
    cache_key,
    usage_since,
)
from prompttune.search._labelprobs import (
    LABEL_MAX_TOKENS,
    TOP_LOGPROBS,
    ScoringChoice,
    ScoringTally,
    calibrate,
    evaluation_calls,
    label_request,
    label_task,
    resolve_scoring,
)
from prompttune.search._metrics import (
    choose_label,
    extract_prediction,
    last_number,
    normalize_answer,
    score_answer,
    token_f1,
)
from prompttune.search._openai import OpenAIChatModel, OpenAIChatModels, OpenAIClientPool
from prompttune.search._paired import compare_evaluations
from prompttune.search._proposer import STYLE_TIPS, InstructionProposer, parse_proposal
from prompttune.search._protocols import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Embedder,
    MultiSampleChatModel,
    ResponseCache,
    SearchObserver,
)
from prompttune.search._recommend import ModelOutcome, model_costs, on_frontier, recommend
from prompttune.search._runner import Runner
from prompttune.search._scorers import (
    JUDGE_ROLE,
    AnswerScorer,
    EmbeddingScorer,
    JudgeScorer,
    MetricScorer,
    build_scorer,
    calls_per_example,
    parse_judge_score,
)
from prompttune.search._setup import RunnerDeps, TestListener
from prompttune.search._space import SearchSpace, TrialConfig
from prompttune.search._split import split_examples
from prompttune.search._state import minibatch_rungs
from prompttune.search._stats import bootstrap_ci, make_score, paired_bootstrap_lower_bound
from prompttune.search._types import DatasetSplits, ModelEndpoint
from prompttune.search._validate import validate_splits, validate_task

__all__ = [
    "JUDGE_ROLE",
    "LABEL_MAX_TOKENS",
    "MAX_ANSWER_CHARS",
    "MAX_FAILURES_WITHOUT_SUCCESS",
    "STYLE_TIPS",
    "TOP_LOGPROBS",
    "AnswerScorer",
    "BudgetExceeded",
    "CallBudget",
    "CallSettings",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "ConcurrencyLimit",
    "DatasetSplits",
    "DemoSet",
    "Embedder",
    "EmbeddingScorer",
    "EndpointControl",
    "EndpointFailing",
    "EndpointHealth",
    "EndpointLimits",
    "EndpointPolicy",
    "FailedPrecondition",
    "FailureTally",
    "GatewayFactory",
    "GatewayRegistry",
    "InstructionProposer",
    "InvalidArgument",
    "JudgeScorer",
    "LLMCallFailed",
    "LLMGateway",
    "MetricScorer",
    "ModelEndpoint",
    "ModelOutcome",
    "MultiSampleChatModel",
    "NotFound",
    "OpenAIChatModel",
    "OpenAIChatModels",
    "OpenAIClientPool",
    "Pricing",
    "PromptTuneError",
    "Reservation",
    "ResponseCache",
    "Runner",
    "RunnerDeps",
    "ScoringChoice",
    "ScoringTally",
    "SearchCancelled",
    "SearchFailed",
    "SearchObserver",
    "SearchSpace",
    "SentenceTransformerEmbedder",
    "TestListener",
    "TokenBucket",
    "TrialConfig",
    "UpstreamUnavailable",
    "UsageLedger",
    "add_usage",
    "bootstrap_ci",
    "build_demo_sets",
    "build_scorer",
    "cache_key",
    "calibrate",
    "calls_per_example",
    "choose_label",
    "compare_evaluations",
    "estimate",
    "estimate_call_tokens",
    "evaluate_prompt",
    "evaluation_calls",
    "extract_prediction",
    "final_calls",
    "label_request",
    "label_task",
    "last_number",
    "make_score",
    "minibatch_rungs",
    "minilm_model_dir",
    "model_costs",
    "normalize_answer",
    "on_frontier",
    "paired_bootstrap_lower_bound",
    "paired_difference",
    "parse_judge_score",
    "parse_proposal",
    "recommend",
    "resolve_scoring",
    "score_answer",
    "score_examples",
    "split_examples",
    "token_f1",
    "usage_since",
    "validate_splits",
    "validate_task",
]
