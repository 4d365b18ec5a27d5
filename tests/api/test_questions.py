"""POST/GET /questions against a real PostgreSQL and the stand-in over loopback HTTP."""

from __future__ import annotations

import asyncio

import pytest
import tornado.httpserver
import tornado.testing

from jservice.standin import Behaviour, make_standin_app
from queries.questions import insert_new_questions
from tests.support import assert_problem, call, sql
from upstream.client import Clue, JServiceClient, UpstreamError, parse_clue, parse_retry_after
from upstream.sharing import SharedUpstream


async def post_questions(base_url: str, count: int):
    return await call(base_url, "POST", "/questions", {"questions_num": count})


def stored_ids(db: str) -> list[int]:
    return [row[0] for row in sql(db, "SELECT jservice_id FROM questions ORDER BY id")]


QUESTION_KEYS = {"id", "question", "answer", "created_at", "airdate", "value", "category", "saved_at"}


@pytest.mark.gen_test
async def test_empty_database_answers_empty_object(base_url, db):
    reply = await post_questions(base_url, 3)
    assert reply.status == 200
    assert reply.content_type.startswith("application/json")
    assert reply.json == {}
    assert len(set(stored_ids(db))) == 3


@pytest.mark.gen_test
async def test_answer_is_the_question_saved_before_the_request(base_url, db):
    await post_questions(base_url, 2)
    latest = (await call(base_url, "GET", "/questions?limit=1")).json["items"][0]
    reply = await post_questions(base_url, 4)
    assert reply.status == 200
    assert reply.json == latest
    assert reply.json["id"] == stored_ids(db)[1]
    assert set(reply.json) == QUESTION_KEYS
    again = await post_questions(base_url, 1)
    assert again.json["id"] == stored_ids(db)[5]
    assert len(set(stored_ids(db))) == 7


@pytest.mark.gen_test
async def test_question_fields_follow_upstream(base_url, db, standin):
    await post_questions(base_url, 1)
    stored = (await post_questions(base_url, 0)).json
    assert isinstance(stored["id"], int) and stored["question"] and stored["answer"]
    assert stored["created_at"].endswith("Z") and stored["saved_at"].endswith("Z")
    assert stored["category"]
    assert standin.behaviour.requested_counts == [1]


@pytest.mark.gen_test
async def test_zero_stores_nothing_and_returns_latest(base_url, db, standin):
    assert (await post_questions(base_url, 0)).json == {}
    await post_questions(base_url, 2)
    reply = await post_questions(base_url, 0)
    assert reply.json["id"] == stored_ids(db)[-1]
    assert len(stored_ids(db)) == 2
    assert standin.behaviour.requested_counts == [2]


@pytest.mark.gen_test
async def test_duplicates_inside_a_batch_are_asked_for_again(base_url, db, standin):
    standin.behaviour.repeat_in_batch = True
    reply = await post_questions(base_url, 4)
    assert reply.status == 200
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == 4
    # Each call asks only for what is still missing, never one call per question.
    counts = standin.behaviour.requested_counts
    assert counts[:2] == [4, 2] and all(count <= 2 for count in counts[2:])


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=200)
async def test_duplicates_across_requests_are_replaced(base_url, db, standin):
    standin.behaviour.pool_size = 6
    await post_questions(base_url, 4)
    reply = await post_questions(base_url, 2)
    assert reply.status == 200
    assert sorted(stored_ids(db)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=200)
async def test_clues_with_empty_text_do_not_count(base_url, db, standin):
    standin.behaviour.pool_size = 10
    standin.behaviour.blank_ids = frozenset(range(1, 6))
    reply = await post_questions(base_url, 5)
    assert reply.status == 200
    assert sorted(stored_ids(db)) == [6, 7, 8, 9, 10]


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=200)
async def test_concurrent_requests_store_no_duplicate(base_url, db, standin):
    # Duplicates across the 30 requests are likely (150 of 320), so the call budget is generous.
    replies = await asyncio.gather(*(post_questions(base_url, 5) for _ in range(30)))
    assert [reply.status for reply in replies] == [200] * 30
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == 150


@pytest.mark.gen_test
async def test_transient_failures_are_retried(base_url, db, standin):
    standin.behaviour.fail_times = 2
    standin.behaviour.fail_status = 503
    reply = await post_questions(base_url, 3)
    assert reply.status == 200
    assert len(stored_ids(db)) == 3
    assert len(standin.behaviour.requested_counts) == 3


@pytest.mark.gen_test
async def test_rate_limit_honours_retry_after(base_url, db, standin):
    standin.behaviour.fail_times = 1
    standin.behaviour.fail_status = 429
    standin.behaviour.retry_after = "1"
    reply = await post_questions(base_url, 2)
    assert reply.status == 200
    assert len(stored_ids(db)) == 2
    first, second = standin.behaviour.request_times
    assert second - first >= 1.0  # the service waited as long as the upstream asked


@pytest.mark.gen_test
async def test_retry_after_beyond_the_budget_gives_up_at_once(base_url, db, standin):
    standin.behaviour.fail_times = 1
    standin.behaviour.fail_status = 429
    standin.behaviour.retry_after = "3600"
    problem = assert_problem(await post_questions(base_url, 2), 502)
    assert problem["saved"] == 0 and problem["requested"] == 2
    assert len(standin.behaviour.requested_counts) == 1


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=4)
async def test_upstream_always_failing_is_502_within_the_call_budget(base_url, db, standin, settings):
    standin.behaviour.fail_times = 10**6
    standin.behaviour.fail_status = 500
    problem = assert_problem(await post_questions(base_url, 3), 502)
    assert (problem["saved"], problem["requested"]) == (0, 3)
    assert len(standin.behaviour.requested_counts) <= settings.jservice_max_calls
    assert stored_ids(db) == []


@pytest.mark.gen_test
@pytest.mark.parametrize("garbage", ["<html><body><h1>Moved</h1></body></html>", "[" * 100_000, '{"id": 1}'])
async def test_upstream_answering_garbage_is_502(base_url, db, standin, garbage):
    standin.behaviour.garbage = garbage
    problem = assert_problem(await post_questions(base_url, 3), 502)
    assert "JSON" in problem["detail"]
    assert len(standin.behaviour.requested_counts) == 1


@pytest.mark.gen_test
async def test_an_upstream_answer_over_8_mib_is_abandoned_with_502(base_url, db, standin):
    standin.behaviour.garbage = "[" + "0," * (4 * 1024 * 1024 + 1) + "0]"
    problem = assert_problem(await post_questions(base_url, 3), 502)
    assert "larger than" in problem["detail"]
    assert len(standin.behaviour.requested_counts) == 1


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=4)
async def test_upstream_unreachable_is_502(base_url, db, standin):
    standin.server.stop()
    problem = assert_problem(await post_questions(base_url, 2), 502)
    assert "cannot reach" in problem["detail"]
    assert stored_ids(db) == []


@pytest.mark.gen_test
@pytest.mark.settings(jservice_timeout=0.3, jservice_budget_seconds=1.0)
async def test_upstream_hanging_is_504_within_the_time_budget(base_url, db, standin, settings):
    standin.behaviour.hang = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    problem = assert_problem(await post_questions(base_url, 2), 504)
    assert (problem["saved"], problem["requested"]) == (0, 2)
    # The bound is the contract (a budget, never a hang), not a speed measurement.
    assert loop.time() - started < settings.jservice_budget_seconds + 2


@pytest.mark.gen_test
async def test_only_known_questions_upstream_is_503_and_keeps_what_was_stored(base_url, db, standin):
    standin.behaviour.pool_size = 3
    problem = assert_problem(await post_questions(base_url, 5), 503)
    assert (problem["saved"], problem["requested"]) == (3, 5)
    assert sorted(stored_ids(db)) == [1, 2, 3]
    problem = assert_problem(await post_questions(base_url, 1), 503)
    assert problem["saved"] == 0
    assert sorted(stored_ids(db)) == [1, 2, 3]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body",
    [
        {"questions_num": "3"},
        {"questions_num": 2.5},
        {"questions_num": True},
        {"questions_num": None},
        {"questions_num": [3]},
        {"questions_num": {"n": 3}},
        {"questions_num": -1},
        {"questions_num": 101},
        {"questions_num": 10**30},
        {},
        {"questions_num": 1, "extra": 1},
        {"data": {"questions_num": 1}},
    ],
)
async def test_invalid_questions_num_is_422_naming_the_field(base_url, db, standin, body):
    problem = assert_problem(await call(base_url, "POST", "/questions", body), 422)
    assert problem["errors"][0]["field"] in {"questions_num", "extra", "data"}
    assert problem["errors"][0]["field"] in problem["detail"]
    assert stored_ids(db) == []
    assert standin.behaviour.requested_counts == []


@pytest.mark.gen_test
@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"questions_num"', b"3", b"\xff\xfe", b"{"])
async def test_body_that_is_not_a_json_object_is_400(base_url, db, raw):
    assert_problem(await call(base_url, "POST", "/questions", raw=raw), 400)
    assert stored_ids(db) == []


@pytest.mark.gen_test
async def test_oversized_json_body_is_413(base_url, db):
    raw = b'{"questions_num": 1, "pad": "' + b"x" * 70_000 + b'"}'
    assert_problem(await call(base_url, "POST", "/questions", raw=raw), 413)
    assert stored_ids(db) == []


@pytest.mark.gen_test
async def test_listing_is_newest_first_with_total(base_url, db):
    await post_questions(base_url, 5)
    ids = stored_ids(db)
    page = (await call(base_url, "GET", "/questions?limit=2&offset=1")).json
    assert page["total"] == 5
    assert [item["id"] for item in page["items"]] == [ids[3], ids[2]]
    everything = (await call(base_url, "GET", "/questions")).json
    assert [item["id"] for item in everything["items"]] == ids[::-1]


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=abc", "offset=-1", "offset=1.5", "limit="])
async def test_bad_paging_is_422(base_url, db, query):
    assert_problem(await call(base_url, "GET", f"/questions?{query}"), 422)


@pytest.mark.gen_test
@pytest.mark.parametrize("raw", [b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 9_000 + b"1" + b"}" * 9_000])
async def test_absurdly_nested_json_is_400(base_url, db, raw):
    assert_problem(await call(base_url, "POST", "/questions", raw=raw), 400)


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3", "offset=99999999999999999999999"])
async def test_non_ascii_or_huge_digits_in_paging_are_422(base_url, db, query):
    assert_problem(await call(base_url, "GET", f"/questions?{query}"), 422)


@pytest.mark.gen_test
async def test_a_field_name_that_is_a_lone_surrogate_is_reported(base_url, db):
    problem = assert_problem(
        await call(base_url, "POST", "/questions", raw=b'{"questions_num":1,"\\ud800":1}'), 422
    )
    assert problem["errors"][0]["field"] == "\ud800"


@pytest.mark.parametrize(
    "item",
    [
        {"id": 1, "question": "\ud800", "answer": "a"},
        {"id": 1, "question": "q\x00", "answer": "a"},
        {"id": True, "question": "q", "answer": "a"},
        {"id": 0, "question": "q", "answer": "a"},
        {"id": 2**63, "question": "q", "answer": "a"},
        {"id": 1, "question": "q", "answer": 5},
        {"id": 1, "question": " ", "answer": "a"},
        "not an object",
    ],
)
def test_unusable_upstream_clues_are_dropped(item):
    assert parse_clue(item) is None


def test_odd_optional_upstream_fields_become_null():
    clue = parse_clue(
        {
            "id": 7,
            "question": "q",
            "answer": "a",
            "value": "200",
            "airdate": "yesterday",
            "category": {"title": 5},
        }
    )
    assert clue is not None
    assert (clue.value, clue.airdate, clue.category, clue.created_at) == (None, None, None, None)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.settings(db_pool_size=16, jservice_max_calls=200, jservice_budget_seconds=30.0)
async def test_concurrent_batches_sharing_ids_never_deadlock(base_url, db, standin):
    # Overlapping batches in random order used to lock rows in opposite orders and deadlock.
    standin.behaviour.pool_size = 1000
    standin.behaviour.latency = 0.02
    for _ in range(2):
        replies = await asyncio.gather(*(post_questions(base_url, 25) for _ in range(16)))
        assert [reply.status for reply in replies] == [200] * 16, [reply.json for reply in replies]
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == 800


@pytest.mark.parametrize(
    "moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1066-10-14T09:00:00Z", "3000-01-01"]
)
def test_upstream_dates_out_of_range_become_null(moment):
    clue = parse_clue({"id": 1, "question": "q", "answer": "a", "created_at": moment, "airdate": moment})
    assert clue is not None and clue.created_at is None and clue.airdate is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("-5", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_forms(header, expected):
    assert parse_retry_after(header) == expected


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_requests_share_upstream_calls_and_each_stores_its_own(base_url, db, standin):
    standin.behaviour.latency = 0.05
    standin.behaviour.pool_size = 2_000_000_000  # no id drawn twice across calls (a million did, ~1% of runs)
    replies = await asyncio.gather(*(post_questions(base_url, 5) for _ in range(30)))
    assert {reply.status for reply in replies} == {200}
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == 150
    counts = standin.behaviour.requested_counts
    assert len(counts) < 30 and max(counts) <= 100 and sum(counts) == 150


@pytest.mark.gen_test(timeout=60)
async def test_a_shared_call_failing_fails_each_of_its_asks_and_the_next_call_goes_out(app, standin):
    upstream = app.settings["jservice"]
    standin.behaviour.fail_times = 1
    outcomes = await asyncio.gather(
        *(upstream.fetch_random(2, 5.0) for _ in range(3)), return_exceptions=True
    )
    assert [type(outcome) for outcome in outcomes] == [UpstreamError] * 3
    assert standin.behaviour.requested_counts == [6]
    assert [
        len(clues)
        for clues in await asyncio.gather(upstream.fetch_random(2, 5.0), upstream.fetch_random(1, 5.0))
    ] == [2, 1]


@pytest.mark.gen_test(timeout=60)
async def test_an_ask_that_times_out_leaves_the_others_served(app, standin):
    upstream = app.settings["jservice"]
    standin.behaviour.latency = 0.5
    impatient = upstream.fetch_random(3, 0.1)
    patient = upstream.fetch_random(4, 5.0)
    outcomes: list[object] = list(await asyncio.gather(impatient, patient, return_exceptions=True))
    assert isinstance(outcomes[0], UpstreamError) and outcomes[0].kind == "timeout"
    assert isinstance(outcomes[1], list) and len(outcomes[1]) == 4
    assert standin.behaviour.requested_counts == [7]


def _clue(jservice_id: int) -> Clue:
    return Clue(jservice_id, f"question {jservice_id}", "answer", None, None, None, None)


def test_batches_stored_together_count_shared_clues_once_and_see_the_same_previous(app, db):
    assert insert_new_questions([[_clue(1)]]) == [(1, None)]
    (first, second, third) = insert_new_questions([[_clue(3), _clue(2)], [_clue(2), _clue(4)], [_clue(1)]])
    assert [first[0], second[0], third[0]] == [2, 1, 0]  # 2 counts for the first batch; 1 was stored
    assert first[1] == second[1] == third[1] and first[1] is not None and first[1]["id"] == 1
    assert stored_ids(db) == [1, 2, 3, 4]  # in id order within one statement


class ScriptedClient(JServiceClient):
    """An upstream client that answers every call with the start of a fixed list of items."""

    def __init__(self, items: list[Clue | None]) -> None:
        self.items = items

    async def fetch_random(self, count: int, timeout: float) -> list[Clue | None]:
        return self.items[:count]


@pytest.mark.gen_test
async def test_unusable_items_of_a_shared_call_cost_each_ask_only_its_own_positions():
    upstream = SharedUpstream(ScriptedClient([None, _clue(1), _clue(2), _clue(3), None, None]), 1)
    first, second = await asyncio.gather(upstream.fetch_random(3, 5.0), upstream.fetch_random(3, 5.0))
    assert [clue and clue.jservice_id for clue in first] == [None, 1, 2]
    assert [clue and clue.jservice_id for clue in second] == [3, None, None]


@pytest.mark.gen_test(timeout=10)
async def test_a_call_with_under_a_millisecond_left_still_times_out(app, standin):
    # libcurl reads a timeout that rounds to 0 ms as "no limit"; the call must not hang.
    standin.behaviour.hang = True
    client = JServiceClient(app.settings["http_client"], standin.url)
    with pytest.raises(UpstreamError) as failure:
        await client.fetch_random(1, 0.0004)
    assert failure.value.kind == "timeout"


UNUSABLE_ITEMS = (
    '[{"id": "abc", "question": "q", "answer": "a"}, {"id": 1.5, "question": "q", "answer": "a"},'
    ' {"id": 1180591620717411303424, "question": "q", "answer": "a"},'
    ' {"id": true, "question": "q", "answer": "a"}, {"id": NaN, "question": "q", "answer": "a"},'
    ' {"id": 7, "question": "q\\u0000", "answer": "a"}, {"id": 8, "question": "q", "answer": "\\ud800"}]'
)


@pytest.mark.gen_test
@pytest.mark.settings(jservice_max_calls=3)
@pytest.mark.parametrize(
    ("answer", "words"), [(UNUSABLE_ITEMS, "only unusable questions"), ("[]", "no questions")]
)
async def test_an_upstream_sending_no_usable_question_is_502_saying_so(base_url, db, standin, answer, words):
    standin.behaviour.garbage = answer
    problem = assert_problem(await post_questions(base_url, 5), 502)
    assert words in problem["detail"]
    assert (problem["saved"], problem["requested"]) == (0, 5)
    assert stored_ids(db) == []


@pytest.mark.gen_test
async def test_upstream_redirects_are_not_followed(base_url, db, standin):
    elsewhere = Behaviour()
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_standin_app(elsewhere))
    server.add_sockets([sock])
    try:
        standin.behaviour.redirect_to = f"http://localhost:{port}/api/random?count=3"
        problem = assert_problem(await post_questions(base_url, 3), 502)
        assert "redirect" in problem["detail"]
        assert len(standin.behaviour.requested_counts) == 1  # not retried either
        assert elsewhere.requested_counts == []
    finally:
        server.stop()
