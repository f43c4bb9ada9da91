"""Job params: conversion of declared params from their JSON form, and the instance key."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from batchctl.errors import InvalidParams, JobDefinitionError, UnknownExecution, UsageError
from batchctl.job import Job
from batchctl.model import (
    MAX_ID,
    Param,
    canonical_json,
    convert_params,
    instance_key,
    params_to_json,
    parse_execution_id,
    parse_params,
)


def key(job: Job, given: dict) -> str:
    return instance_key(job.convert_params(given))


@pytest.fixture
def job() -> Job:
    return Job(
        "typed",
        params={
            "n": int,
            "rate": Param(float, default=1.5),
            "flag": Param(bool, default=False),
            "day": Param(date, default=date(2024, 1, 1)),
            "at": Param(datetime, default=None),
            "name": Param(str, default="x"),
        },
    )


def test_a_string_int_and_an_int_make_the_same_instance_key(job: Job) -> None:
    assert key(job, {"n": "5"}) == key(job, {"n": 5})


def test_key_order_does_not_change_the_instance_key(job: Job) -> None:
    assert key(job, {"n": 1, "name": "a"}) == key(job, {"name": "a", "n": 1})


def test_a_different_value_makes_a_different_instance_key(job: Job) -> None:
    assert key(job, {"n": 5}) != key(job, {"n": 6})


def test_the_instance_key_is_the_sha256_of_the_canonical_json(job: Job) -> None:
    import hashlib

    converted = job.convert_params({"n": "5", "day": "2024-01-31"})
    expected = hashlib.sha256(canonical_json(converted).encode()).hexdigest()
    assert instance_key(converted) == expected
    assert len(instance_key(converted)) == 64


def test_dates_are_canonical_iso_in_the_key(job: Job) -> None:
    converted = job.convert_params({"n": 1, "day": "2024-01-31"})
    assert converted["day"] == date(2024, 1, 31)
    assert '"day":"2024-01-31"' in canonical_json(converted)
    assert key(job, {"n": 1, "day": "2024-01-31"}) == instance_key(
        {**converted, "day": date(2024, 1, 31)}
    )


def test_canonical_json_has_sorted_keys_and_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_datetimes_in_z_and_offset_form_are_the_same_instance(job: Job) -> None:
    assert key(job, {"n": 1, "at": "2024-01-31T10:00:00Z"}) == key(
        job, {"n": 1, "at": "2024-01-31T10:00:00+00:00"}
    )


def test_declared_params_arrive_typed(job: Job) -> None:
    converted = job.convert_params(
        {"n": "7", "rate": "2.5", "flag": "true", "day": "2024-02-29", "at": "2024-01-31T10:00:00+00:00"}
    )
    assert converted == {
        "n": 7,
        "rate": 2.5,
        "flag": True,
        "day": date(2024, 2, 29),
        "at": datetime(2024, 1, 31, 10, tzinfo=timezone.utc),
        "name": "x",
    }


def test_optional_params_take_their_default(job: Job) -> None:
    converted = job.convert_params({"n": 1})
    assert converted["rate"] == 1.5
    assert converted["flag"] is False
    assert converted["day"] == date(2024, 1, 1)


@pytest.fixture
def free_form() -> Job:
    return Job("free", params={"n": int}, extra_params=True)


def test_undeclared_params_are_kept_as_given_by_a_job_with_extra_params(free_form: Job) -> None:
    converted = free_form.convert_params({"n": "1", "extra": "5", "nested": {"a": [1]}})
    assert converted == {"n": 1, "extra": "5", "nested": {"a": [1]}}


def test_an_undeclared_string_and_int_are_different_instances(free_form: Job) -> None:
    assert key(free_form, {"n": 1, "extra": "5"}) != key(free_form, {"n": 1, "extra": 5})


def test_an_undeclared_param_is_refused_naming_the_closest_declared_one() -> None:
    eod = Job("eod", params={"date": date, "out_dir": Param(str, default="out")})
    with pytest.raises(InvalidParams) as refused:
        eod.convert_params({"date": "2024-01-31", "out_dri": "x"})
    assert refused.value.message == (
        "unknown param 'out_dri' for job eod (did you mean 'out_dir'? declared: date, out_dir)"
    )


@pytest.mark.parametrize("given", ["Day", "DAY", "dya"])
def test_a_wrong_case_or_misspelt_name_gets_the_same_hint(given: str) -> None:
    report = Job("report", params={"day": date, "region": Param(str, default="eu")})
    with pytest.raises(InvalidParams, match=rf"^unknown param '{given}' for job report "
                       r"\(did you mean 'day'\? declared: day, region\)$"):
        report.convert_params({given: "2024-01-31"})


def test_a_name_like_none_declared_lists_the_declared_ones() -> None:
    with pytest.raises(InvalidParams, match=r"^unknown param 'zzz' for job j \(declared: day\)$"):
        Job("j", params={"day": date}).convert_params({"day": "2024-01-31", "zzz": 1})


def test_a_job_without_params_says_it_declares_none() -> None:
    with pytest.raises(InvalidParams, match=r"unknown param 'x' for job j \(it declares no params\)"):
        Job("j").convert_params({"x": 1})


def test_every_unknown_name_is_named_on_one_line() -> None:
    with pytest.raises(InvalidParams) as refused:
        Job("j", params={"day": date}).convert_params({"dya": "2024-01-31", "b": 1, "c": 2})
    assert refused.value.message == (
        "unknown param 'dya' for job j (did you mean 'day'? declared: day); also unknown: 'b', 'c'"
    )


def test_an_unknown_name_is_refused_before_a_missing_one_is_reported() -> None:
    """A typo of a required param is both: naming the typo is what helps."""
    with pytest.raises(InvalidParams, match=r"unknown param 'dat' .*did you mean 'date'"):
        Job("j", params={"date": date}).convert_params({"dat": "2024-01-31"})


def test_stored_params_with_a_name_no_longer_declared_still_convert() -> None:
    """An instance made before a declaration was removed can still restart."""
    job = Job("j", params={"day": date})
    assert job.convert_params({"day": "2024-01-31", "old": 1}, stored=True) == {
        "day": date(2024, 1, 31), "old": 1,
    }


def test_param_pairs_arrive_as_strings_and_merge_with_the_json() -> None:
    assert parse_params('{"n": 5}', ["day=2024-01-31", "note=a=b", "empty="]) == {
        "n": 5, "day": "2024-01-31", "note": "a=b", "empty": "",
    }
    job = Job("j", params={"n": int, "day": date, "note": str, "empty": str})
    assert job.convert_params(parse_params(None, ["n=5", "day=2024-01-31", "note=x", "empty="])) == {
        "n": 5, "day": date(2024, 1, 31), "note": "x", "empty": "",
    }


def test_a_pair_and_the_same_json_value_make_the_same_instance(job: Job) -> None:
    assert key(job, parse_params(None, ["n=5", "day=2024-01-31"])) == key(
        job, parse_params('{"n": 5, "day": "2024-01-31"}')
    )


@pytest.mark.parametrize(
    ("text", "pairs"),
    [('{"n": 1}', ["n=2"]), (None, ["n=1", "n=2"])],
)
def test_a_name_given_twice_is_refused(text: str | None, pairs: list[str]) -> None:
    with pytest.raises(InvalidParams, match=r"^param 'n' is given twice"):
        parse_params(text, pairs)


@pytest.mark.parametrize("pair", ["n", "=5", " =5"])
def test_a_pair_without_a_name_and_an_equals_sign_is_refused(pair: str) -> None:
    with pytest.raises(InvalidParams, match=r"^--param expects key=value, got .*example: "):
        parse_params(None, [pair])


def test_the_json_error_shows_valid_input() -> None:
    with pytest.raises(InvalidParams) as refused:
        parse_params("{date: 2024-01-31}")
    assert "--params is not valid JSON" in refused.value.message
    assert """--params '{"date": "2024-01-31"}' or -P date=2024-01-31""" in refused.value.message


def test_a_rerun_has_a_key_of_its_own_derived_from_the_params(job: Job) -> None:
    import hashlib

    converted = job.convert_params({"n": 5})
    assert instance_key(converted, 0) == instance_key(converted)
    assert instance_key(converted, 2) == hashlib.sha256(
        (canonical_json(converted) + "#rerun=2").encode()
    ).hexdigest()
    assert len({instance_key(converted, n) for n in range(4)}) == 4


def test_params_to_json_gives_dates_as_iso_strings(job: Job) -> None:
    stored = params_to_json(job.convert_params({"n": 1, "day": "2024-01-31"}))
    assert stored["day"] == "2024-01-31"
    assert job.convert_params(stored) == job.convert_params({"n": 1, "day": "2024-01-31"})


def test_a_missing_param_is_an_error_naming_it(job: Job) -> None:
    with pytest.raises(InvalidParams, match=r"missing param 'n'"):
        job.convert_params({})


def test_a_null_required_param_counts_as_missing(job: Job) -> None:
    with pytest.raises(InvalidParams, match=r"'n'"):
        job.convert_params({"n": None})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", "five"),
        ("n", "5.0"),
        ("n", 5.5),
        ("n", True),
        ("n", " 5"),
        ("rate", "fast"),
        ("rate", "nan"),
        ("flag", "yes"),
        ("flag", 1),
        ("day", "2024-02-30"),
        ("day", "2024-01-31T10:00:00"),
        ("at", "2024-01-31"),
        ("name", 5),
    ],
)
def test_an_ill_typed_param_is_an_error_naming_it(job: Job, name: str, value: object) -> None:
    given = {"n": 1, name: value}
    with pytest.raises(InvalidParams, match=rf"param '{name}' must be"):
        job.convert_params(given)


def test_params_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(InvalidParams, match="JSON object"):
        convert_params({}, ["a"])  # type: ignore[arg-type]


def test_an_unsupported_param_type_is_a_definition_error_naming_the_param() -> None:
    with pytest.raises(JobDefinitionError, match="'items'"):
        Job("bad-param-type", params={"items": list})


# -- parsing --params and ids ---------------------------------------------------------------------


def test_params_json_is_parsed_as_an_object() -> None:
    assert parse_params('{"n": 5, "rate": 1.5, "tags": ["a"], "big": 18446744073709551616}') == {
        "n": 5, "rate": 1.5, "tags": ["a"], "big": 2**64,
    }
    assert parse_params(None) == {} and parse_params("  ") == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"rate": NaN}', "param 'rate' holds NaN"),
        ('{"rate": Infinity}', "param 'rate' holds Infinity"),
        ('{"deep": {"list": [1, -Infinity]}}', "param 'deep' holds -Infinity"),
        ('{"rate": 1e999}', "param 'rate' holds Infinity"),
        ('{"n": ' + "9" * 5000 + "}", "param 'n' holds an integer of more than 4000 digits"),
        ('{"n": -' + "9" * 5000 + "}", "param 'n' holds an integer of more than 4000 digits"),
        ('{"deep": ' + "[" * 150 + "]" * 150 + "}", "param 'deep' is nested more than 100 levels"),
        ('{"deep": ' + "[" * 10_000 + "]" * 10_000 + "}", "--params is nested too deeply"),
        ('{"deep": ' + '{"a":' * 10_000 + "1" + "}" * 10_001, "--params is nested too deeply"),
    ],
)
def test_params_json_without_a_json_form_is_refused_naming_the_param(text: str, problem: str) -> None:
    """Python's json reads NaN and Infinity, integers it cannot print again, and nesting
    until it overflows the stack: each is one InvalidParams (exit 2), never a raw error."""
    with pytest.raises(InvalidParams) as raised:
        parse_params(text)
    assert problem in raised.value.message
    assert len(raised.value.message) < 200


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (float("nan"), "holds NaN"),
        ([1, {"x": float("-inf")}], "holds -Infinity"),
        (10**5000, "integer of more than 4000 digits"),
        ("deep", "nested more than 100 levels"),
    ],
    ids=["nan", "nested-inf", "huge-int", "deep"],
)
def test_undeclared_param_values_without_a_json_form_are_refused(value: object, problem: str) -> None:
    """Python callers bypass the JSON text: the conversion refuses the same values."""
    if value == "deep":
        value = []
        for _ in range(10_000):
            value = [value]
    with pytest.raises(InvalidParams, match=rf"param 'extra' .*{problem}"):
        convert_params({}, {"extra": value})


def test_a_declared_param_refuses_nan_and_shows_a_long_value_cut() -> None:
    with pytest.raises(InvalidParams, match="param 'rate' holds NaN"):
        convert_params({"rate": Param(float)}, {"rate": float("nan")})
    with pytest.raises(InvalidParams) as raised:
        convert_params({"n": Param(int)}, {"n": "9" * 5000})
    assert "param 'n' must be an integer" in raised.value.message
    assert len(raised.value.message) < 120


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("0042", 42), (str(MAX_ID), MAX_ID), (7, 7)])
def test_an_execution_id_is_parsed(text: str | int, expected: int) -> None:
    assert parse_execution_id(text) == expected


@pytest.mark.parametrize(
    "text", [str(MAX_ID + 1), "99999999999999999999", "9" * 5000, MAX_ID + 1, 10**30]
)
def test_an_id_beyond_64_bits_names_no_execution(text: str | int) -> None:
    """The databases hold 64-bit ids: a larger one is a missing id (exit 2), not an overflow."""
    with pytest.raises(UnknownExecution, match=r"no execution with id \d") as raised:
        parse_execution_id(text)
    assert len(raised.value.message) < 80


@pytest.mark.parametrize("text", ["", "x1", "-1", "\u00b2", "\uff11\uff12", True])
def test_anything_but_ascii_digits_is_not_an_id(text: str | bool) -> None:
    with pytest.raises(UsageError, match="not an execution id"):
        parse_execution_id(text)
