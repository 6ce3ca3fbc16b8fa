"""Every contract type survives the wire codec and the document codec unchanged, and the two
codecs cover every field the proto defines."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompttune import contract as c
from prompttune.contract import wire
from prompttune.v1 import optimizer_pb2 as pb
from tests.contract.strategies import EVERY_TYPE, prompts

_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", sorted(EVERY_TYPE))
def test_every_type_survives_types_to_proto_to_types(kind: str) -> None:
    @_SETTINGS
    @given(EVERY_TYPE[kind])
    def round_trip(value: Any) -> None:
        message = wire.to_message(value)
        decoded = wire.from_message(
            type(value), type(message).FromString(message.SerializeToString())
        )
        assert decoded == value

    round_trip()


@pytest.mark.parametrize("kind", sorted(EVERY_TYPE))
def test_every_type_survives_types_to_file_to_types(kind: str) -> None:
    @_SETTINGS
    @given(EVERY_TYPE[kind])
    def round_trip(value: Any) -> None:
        text = json.dumps(c.to_document(value))
        assert c.from_document(type(value), json.loads(text)) == value

    round_trip()


@_SETTINGS
@given(
    prompts.map(
        lambda p: dataclasses.replace(
            p, knn_k=2, format=dataclasses.replace(p.format, reasoning=True)
        )
    )
)
def test_knn_prompts_with_reasoning_survive_both_codecs(prompt: c.Prompt) -> None:
    assert wire.from_message(c.Prompt, wire.to_message(prompt)) == prompt
    assert c.from_document(c.Prompt, c.to_document(prompt)) == prompt


def _contract_types() -> list[type]:
    return [
        value
        for value in vars(c).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value is not c.JobSpec
    ]


@pytest.mark.parametrize("cls", _contract_types(), ids=lambda cls: cls.__name__)
def test_every_proto_field_has_its_contract_field(cls: type) -> None:
    message = wire.message_class(cls)
    proto_fields = {field.name for field in message.DESCRIPTOR.fields}
    contract_fields = {field.name for field in dataclasses.fields(cls)}

    assert proto_fields == contract_fields


def test_every_proto_message_of_a_concept_has_a_contract_type() -> None:
    covered = {wire.message_class(cls).DESCRIPTOR.name for cls in _contract_types()}
    rpc_envelopes = {
        name
        for name in pb.DESCRIPTOR.message_types_by_name
        if name.endswith(("Request", "Response"))
    }

    assert set(pb.DESCRIPTOR.message_types_by_name) - rpc_envelopes - covered == set()


def test_unset_proto_fields_decode_to_the_documented_defaults() -> None:
    search = wire.from_message(c.SearchSpec, pb.SearchSpec())
    model = wire.from_message(c.ModelSpec, pb.ModelSpec())

    assert search == c.SearchSpec()
    assert model == c.ModelSpec()


def test_explicit_zero_of_an_optional_field_is_kept() -> None:
    search = wire.from_message(
        c.SearchSpec, pb.SearchSpec(max_demos=0, num_instruction_candidates=0)
    )

    assert (search.max_demos, search.num_instruction_candidates) == (0, 0)


def test_an_unknown_enum_number_names_the_field() -> None:
    message = pb.TaskSpec(description="d", metric=99)  # type: ignore[arg-type]

    with pytest.raises(c.ContractError, match=r"^task\.metric: unknown value 99"):
        wire.from_message(c.TaskSpec, message, "task")


def test_a_misspelt_key_names_its_path_and_the_likely_key() -> None:
    document = {"budget": {"max_trails": 3}}

    with pytest.raises(c.ContractError) as raised:
        c.from_document(c.SearchSpec, document, "search")

    assert raised.value.path == "search.budget.max_trails"
    assert "did you mean 'max_trials'" in str(raised.value)


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"budget": {"max_trials": "eight"}}, "search.budget.max_trials", "expected an integer"),
        ({"max_demos": True}, "search.max_demos", "expected an integer"),
        ({"proposer": {"kind": "openai"}}, "search.proposer.kind", "expected one of local"),
        ({"disable_cache": "no"}, "search.disable_cache", "expected true or false"),
    ],
)
def test_wrong_types_name_the_key_and_what_was_expected(
    document: dict[str, Any], path: str, expected: str
) -> None:
    with pytest.raises(c.ContractError) as raised:
        c.from_document(c.SearchSpec, document, "search")

    assert raised.value.path == path
    assert expected in raised.value.message


def test_a_label_list_must_be_a_list() -> None:
    with pytest.raises(c.ContractError, match=r"task\.labels: expected a list"):
        c.from_document(c.TaskSpec, {"description": "d", "labels": "positive"}, "task")


def test_error_messages_quote_only_a_short_prefix_of_a_value() -> None:
    with pytest.raises(c.ContractError) as raised:
        c.from_document(c.SearchSpec, {"seed": "x" * 20_000}, "search")

    assert len(str(raised.value)) < 120


def test_event_kind_names_its_payload() -> None:
    event = wire.from_message(
        c.JobEvent, pb.JobEvent(job_id="j", sequence=1, notice=pb.Notice(code="a"))
    )

    assert event.kind == "notice"
    assert wire.from_message(c.JobEvent, pb.JobEvent(job_id="j", sequence=2)).kind == "unknown"


@given(st.data())
@settings(max_examples=1)
def test_strategies_cover_every_contract_type(data: st.DataObject) -> None:
    built = {type(data.draw(strategy)) for strategy in EVERY_TYPE.values()}
    nested = {c.ModelSpec, c.TaskSpec, c.SearchSpec, c.Prompt, c.JobResult, c.Job, c.JobEvent}
    assert nested <= built
