"""Input limits of the service. Violations are INVALID_ARGUMENT naming the field.

Every string and repeated field of a request has a bound here; `prompttune.server._validate`
applies them once, at the service's edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Whole requests and datasets.
    max_request_bytes: int = 32 * 1024 * 1024
    max_examples: int = 20_000
    # ComparePrompts scores every example twice.
    max_compare_examples: int = 5_000
    # Free text: descriptions, instructions, rubrics, example inputs and outputs.
    max_chars_per_field: int = 20_000
    # Names: input fields, output_name, endpoint names, environment variable names.
    max_name_chars: int = 64
    max_input_fields: int = 32
    max_labels: int = 200
    max_label_chars: int = 200
    # Example ids and request ids.
    max_id_chars: int = 128
    max_model_chars: int = 256
    max_url_chars: int = 2048
    max_answer_prefix_chars: int = 200
    # Prompts sent to EvaluatePrompt / RenderPrompt.
    max_demos: int = 64
    max_knn_pool: int = 500
    max_knn_k: int = 32
    # Search and models.
    max_trials: int = 10_000
    max_tokens_per_call: int = 4096
    max_concurrency: int = 256
    # Stored job errors are cut to this many characters.
    max_error_chars: int = 2000
    # A job whose claims keep failing (its worker died each time) is failed after this many.
    max_job_attempts: int = 3
