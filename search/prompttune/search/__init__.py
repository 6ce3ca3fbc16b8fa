"""prompttune.search: the prompt optimisation engine (no gRPC, no generated code).

`Runner` searches instructions, demonstration sets and prompt formats with Optuna ask/tell
over an `LLMGateway` (cache -> budget -> concurrency limit -> `ChatModel`), and returns a
`SearchResult` with baseline and best scores on validation and test.
"""

from prompttune.search._budget import Budget, Reservation, estimate_call_tokens
from prompttune.search._demos import DemoSet, build_demo_sets
from prompttune.search._embed import SentenceTransformerEmbedder, minilm_model_dir
from prompttune.search._errors import (
    BudgetExceeded,
    FailedPrecondition,
    InvalidArgument,
    LLMCallFailed,
    NotFound,
    PromptTuneError,
    SearchCancelled,
    UpstreamUnavailable,
)
from prompttune.search._evaluate import CallSettings, evaluate_prompt, score_examples
from prompttune.search._gateway import LLMGateway, OpenAIChatModel, add_usage, cache_key
from prompttune.search._metrics import (
    choose_label,
    extract_prediction,
    last_number,
    normalize_answer,
    score_answer,
    token_f1,
)
from prompttune.search._proposer import STYLE_TIPS, InstructionProposer, parse_proposal
from prompttune.search._protocols import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Embedder,
    ResponseCache,
    SearchObserver,
)
from prompttune.search._render import format_inputs, prompt_token_count, render_messages
from prompttune.search._runner import Runner, RunnerDeps, TrialConfig, estimate, minibatch_rungs
from prompttune.search._split import split_examples
from prompttune.search._stats import bootstrap_ci, make_score, paired_bootstrap_lower_bound
from prompttune.search._types import (
    BudgetUsed,
    ChatMessage,
    DatasetSplits,
    DemoLayout,
    Estimate,
    Evaluation,
    Example,
    ExampleResult,
    InstructionPlacement,
    MetricName,
    ModelEndpoint,
    NewBest,
    PhaseChanged,
    Prompt,
    PromptFormat,
    PromptScores,
    Score,
    SearchConfig,
    SearchEvent,
    SearchResult,
    TaskSpec,
    TrialFinished,
    Usage,
)
from prompttune.search._validate import validate_splits, validate_task

__all__ = [
    "STYLE_TIPS",
    "Budget",
    "BudgetExceeded",
    "BudgetUsed",
    "CallSettings",
    "ChatMessage",
    "ChatModel",
    "ChatRequest",
    "ChatResponse",
    "DatasetSplits",
    "DemoLayout",
    "DemoSet",
    "Embedder",
    "Estimate",
    "Evaluation",
    "Example",
    "ExampleResult",
    "FailedPrecondition",
    "InstructionPlacement",
    "InstructionProposer",
    "InvalidArgument",
    "LLMCallFailed",
    "LLMGateway",
    "MetricName",
    "ModelEndpoint",
    "NewBest",
    "NotFound",
    "OpenAIChatModel",
    "PhaseChanged",
    "Prompt",
    "PromptFormat",
    "PromptScores",
    "PromptTuneError",
    "Reservation",
    "ResponseCache",
    "Runner",
    "RunnerDeps",
    "Score",
    "SearchCancelled",
    "SearchConfig",
    "SearchEvent",
    "SearchObserver",
    "SearchResult",
    "SentenceTransformerEmbedder",
    "TaskSpec",
    "TrialConfig",
    "TrialFinished",
    "UpstreamUnavailable",
    "Usage",
    "add_usage",
    "bootstrap_ci",
    "build_demo_sets",
    "cache_key",
    "choose_label",
    "estimate",
    "estimate_call_tokens",
    "evaluate_prompt",
    "extract_prediction",
    "format_inputs",
    "last_number",
    "make_score",
    "minibatch_rungs",
    "minilm_model_dir",
    "normalize_answer",
    "paired_bootstrap_lower_bound",
    "parse_proposal",
    "prompt_token_count",
    "render_messages",
    "score_answer",
    "score_examples",
    "split_examples",
    "token_f1",
    "validate_splits",
    "validate_task",
]
