"""upstream/: the client against the stand-in over HTTP (failures, redirects, sizes), clue parsing,
and the collecting loop's retries, delays and budget as the stand-in sees them, storing into the
test database through the service's own queries."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from tornado.curl_httpclient import CurlAsyncHTTPClient

from queries.questions import QuestionDict, insert_new_questions, latest_question
from tests.support import sql
from upstream.client import (
    MAX_ANSWER_BYTES,
    Clue,
    JServiceClient,
    UpstreamError,
    parse_clue,
    parse_retry_after,
)
from upstream.collect import (
    Budget,
    QuestionsShortfall,
    QuestionStore,
    backoff_delay,
    store_new_questions,
    unique_clues,
)


@pytest.fixture
def http(io_loop: object) -> Iterator[CurlAsyncHTTPClient]:
    """A libcurl client built as the service builds its own."""
    client = CurlAsyncHTTPClient(force_instance=True, max_body_size=MAX_ANSWER_BYTES)
    yield client
    client.close()


async def failure(client: JServiceClient, count: int = 1, timeout: float = 5.0) -> UpstreamError:
    """The UpstreamError one call raises."""
    with pytest.raises(UpstreamError) as failed:
        await client.fetch_random(count, timeout)
    return failed.value


def item(number: int, **fields: object) -> dict[str, object]:
    """One upstream clue in jService's shape."""
    return {"id": number, "question": f"q{number}", "answer": f"a{number}", **fields}


@pytest.mark.gen_test
async def test_a_batch_is_asked_for_and_parsed(http, standin):
    clues = await JServiceClient(http, standin.url + "/").fetch_random(3, 5.0)
    assert len(clues) == 3 and all(isinstance(clue, Clue) for clue in clues)
    assert standin.behaviour.requested_counts == [3]


@pytest.mark.gen_test
async def test_at_most_100_are_asked_for_and_no_more_than_asked_are_kept(http, standin):
    client = JServiceClient(http, standin.url)
    assert len(await client.fetch_random(150, 5.0)) == 100
    assert standin.behaviour.requested_counts == [100]
    standin.behaviour.garbage = json.dumps([item(1), item(2), "junk"])
    assert [clue and clue.jservice_id for clue in await client.fetch_random(3, 5.0)] == [1, 2, None]
    assert [clue and clue.jservice_id for clue in await client.fetch_random(2, 5.0)] == [1, 2]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>maintenance</html>", "the upstream answered with something that is not JSON"),
        ("[" * 100_000, "the upstream answered with something that is not JSON"),
        ('{"clues": []}', "the upstream answered with JSON that is not a list"),
    ],
    ids=["html", "deep", "object"],
)
async def test_an_unusable_answer_is_a_bad_gateway_not_worth_retrying(http, standin, body, message):
    standin.behaviour.garbage = body
    error = await failure(JServiceClient(http, standin.url))
    assert (error.kind, str(error), error.transient) == ("bad_gateway", message, False)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("status", "transient"),
    [(429, True), (500, True), (502, True), (503, True), (504, True), (400, False), (501, False)],
)
async def test_error_statuses_are_named_and_only_some_retried(http, standin, status, transient):
    standin.behaviour.fail_times, standin.behaviour.fail_status = 1, status
    standin.behaviour.retry_after = "7"
    error = await failure(JServiceClient(http, standin.url))
    assert (error.kind, str(error), error.transient) == (
        "bad_gateway",
        f"the upstream answered HTTP {status}",
        transient,
    )
    assert error.retry_after == (7.0 if status == 429 else None)


@pytest.mark.gen_test
async def test_a_429_without_retry_after_leaves_the_delay_to_the_caller(http, standin):
    standin.behaviour.fail_times, standin.behaviour.fail_status = 1, 429
    assert (await failure(JServiceClient(http, standin.url))).retry_after is None


@pytest.mark.gen_test
@pytest.mark.parametrize("status", [300, 302, 399])
async def test_redirects_are_not_followed(http, standin, status):
    if status == 302:
        standin.behaviour.redirect_to = standin.url + "/api/random?count=1"
    else:
        standin.behaviour.fail_times, standin.behaviour.fail_status = 1, status
    error = await failure(JServiceClient(http, standin.url))
    assert (error.kind, error.transient) == ("bad_gateway", False)
    assert str(error) == (
        f"the upstream answered HTTP {status}, a redirect, which the service does not follow"
        " (set JSERVICE_URL to the address it redirects to)"
    )
    assert standin.behaviour.requested_counts == [1]


@pytest.mark.gen_test
async def test_a_silent_upstream_times_out_and_may_be_retried(http, standin):
    standin.behaviour.hang = True
    error = await failure(JServiceClient(http, standin.url), timeout=0.2)
    assert (error.kind, error.transient) == ("timeout", True)
    assert str(error).startswith("the upstream did not answer in time: ")


@pytest.mark.gen_test
async def test_a_zero_timeout_still_times_out(http, standin):
    standin.behaviour.hang = True  # libcurl reads 0 as no limit at all
    assert (await failure(JServiceClient(http, standin.url), timeout=0)).kind == "timeout"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.gen_test
async def test_an_unreachable_upstream_is_a_bad_gateway_worth_retrying(http):
    error = await failure(JServiceClient(http, f"http://127.0.0.1:{closed_port()}"))
    assert (error.kind, error.transient) == ("bad_gateway", True)
    assert str(error).startswith("cannot reach the upstream: ")


class HangUp:
    """A server that reads each request line and closes the connection without an answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.url = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> HangUp:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.calls += 1
        await reader.readline()
        writer.close()


@pytest.mark.gen_test
async def test_a_connection_closed_without_an_answer_is_a_failed_call_worth_retrying(http, questions):
    hang_up = await HangUp().start()
    error = await failure(JServiceClient(http, hang_up.url))
    assert (error.kind, error.transient) == ("bad_gateway", True)
    assert str(error).startswith("upstream call failed: ")
    with pytest.raises(QuestionsShortfall) as fell_short:
        await store_new_questions(
            1, JServiceClient(http, hang_up.url), questions.store(), Budget(3, 10.0, 2.0)
        )
    assert fell_short.value.reason == "bad_gateway"
    assert fell_short.value.detail.startswith("upstream call failed: ")
    assert hang_up.calls == 4  # the single call, then the three the budget allows
    assert hang_up.server is not None
    hang_up.server.close()


@pytest.mark.gen_test
async def test_an_answer_over_the_size_limit_is_refused(io_loop, standin):
    small = CurlAsyncHTTPClient(force_instance=True, max_body_size=1000)
    try:
        error = await failure(JServiceClient(small, standin.url), count=50)
    finally:
        small.close()
    assert (error.kind, error.transient) == ("bad_gateway", False)
    assert str(error) == f"the upstream's answer is larger than {MAX_ANSWER_BYTES} bytes"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("2.5", 2.5), ("0", 0.0), ("-5", 0.0), ("", None), ("soon", None), (None, None)],
)
def test_retry_after_in_seconds(header, expected):
    assert parse_retry_after(header) == expected


@pytest.mark.parametrize("zone", ["GMT", "-0000", "+0100"])
def test_retry_after_as_a_date(zone):
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    header = format_datetime(when, usegmt=True)
    if zone == "-0000":
        header = header.replace("GMT", "-0000")
    elif zone == "+0100":
        header = format_datetime((when + timedelta(hours=1)).replace(tzinfo=None), usegmt=False) + " +0100"
        header = header.replace(" -0000 +0100", " +0100")
    seconds = parse_retry_after(header)
    assert seconds is not None and 3500 < seconds <= 3600
    assert parse_retry_after(format_datetime(when - timedelta(hours=2), usegmt=True)) == 0.0


def test_a_clue_is_reduced_to_what_is_stored():
    clue = parse_clue(
        item(
            7,
            question="  What is 2+2?  ",
            answer=" four ",
            value=200,
            airdate="2014-02-11T22:47:18.687+02:00",
            created_at="2014-02-11T22:47:18",
            category={"title": "  math "},
        )
    )
    assert clue == Clue(
        jservice_id=7,
        question="What is 2+2?",
        answer="four",
        created_at=datetime(2014, 2, 11, 22, 47, 18, tzinfo=UTC),
        airdate=datetime(2014, 2, 11, 20, 47, 18, 687000, tzinfo=UTC),
        value=200,
        category="math",
    )


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (None, None),
        (0, 0),
        (-(2**31), -(2**31)),
        (2**31 - 1, 2**31 - 1),
        (2**31, None),
        (-(2**31) - 1, None),
        (True, None),
        (2.5, None),
    ],
)
def test_value_is_a_32_bit_integer_or_null(value, kept):
    clue = parse_clue(item(1, value=value))
    assert clue is not None and clue.value == kept


@pytest.mark.parametrize(
    ("moment", "utc"),
    [
        ("1800-01-01T00:00:00+00:00", datetime(1800, 1, 1, tzinfo=UTC)),
        ("2200-12-31T23:59:59Z", datetime(2200, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("1990-01-01T23:30:00-05:00", datetime(1990, 1, 2, 4, 30, tzinfo=UTC)),
        ("1799-12-31T23:59:59Z", None),
        ("2201-01-01T00:00:00Z", None),
        ("1800-01-01T00:30:00+01:00", None),
        (19900101, None),
    ],
)
def test_airdate_in_utc_within_sane_years(moment, utc):
    clue = parse_clue(item(1, airdate=moment))
    assert clue is not None and clue.airdate == utc


@pytest.mark.parametrize(
    "fields",
    [
        {"id": 2**63 - 1},
        {"id": 1, "category": {"title": "\x00"}},
        {"id": 1, "category": {"title": "   "}},
        {"id": 1, "category": "history"},
    ],
)
def test_edge_clues_are_kept_with_what_is_usable(fields):
    clue = parse_clue(item(1) | fields)
    assert clue is not None and clue.jservice_id == fields["id"] and clue.category is None


@pytest.mark.parametrize(
    "raw",
    [
        {"question": "q", "answer": "a"},
        item(1, question=""),
        item(1, answer="  "),
        item(1, answer="a\x00"),
        item(1, question=None),
        item(-1),
        item(0),
        item(2**63),
        ["id", 1],
    ],
)
def test_clues_without_an_id_a_question_and_an_answer_are_unusable(raw):
    assert parse_clue(raw) is None


def clue(number: int) -> Clue:
    return Clue(number, f"q{number}", f"a{number}", None, None, None, None)


def test_unique_clues_keep_the_first_of_each_id_and_drop_unusable_items():
    assert unique_clues([clue(2), None, clue(1), clue(2), clue(3)]) == [clue(2), clue(1), clue(3)]


def test_backoff_grows_from_50_ms_to_a_2_s_cap_with_full_jitter():
    random.seed(1)
    for failures, cap in [(0, 0.05), (1, 0.1), (3, 0.4), (5, 1.6), (6, 2.0), (20, 2.0)]:
        delays = [backoff_delay(failures) for _ in range(400)]
        assert 0 <= min(delays) < cap * 0.1 and cap * 0.9 < max(delays) <= cap


class Questions:
    """The questions table as the loop reaches it: PostgreSQL through the service's own queries, run
    on a thread as the service runs them. It notes the ids of each batch it is handed."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.batches: list[list[int]] = []

    async def latest(self) -> QuestionDict | None:
        return await asyncio.get_running_loop().run_in_executor(None, latest_question)

    async def insert(self, batch: list[Clue]) -> tuple[int, QuestionDict | None]:
        self.batches.append([clue.jservice_id for clue in batch])
        [stored] = await asyncio.get_running_loop().run_in_executor(None, insert_new_questions, [batch])
        return stored

    def store(self) -> QuestionStore:
        return QuestionStore(self.latest, self.insert)

    def add(self, *numbers: int) -> None:
        """Store these upstream ids before the test begins."""
        insert_new_questions([[clue(number) for number in numbers]])

    def count(self) -> int:
        return int(sql(self.database_url, "SELECT count(*) FROM questions")[0][0])


@pytest.fixture
def questions(db: str) -> Questions:
    """An empty questions table."""
    return Questions(db)


BUDGET = Budget(max_calls=5, seconds=10.0, call_timeout=2.0)


async def collect(
    http, standin, count: int, questions: Questions, budget: Budget = BUDGET
) -> QuestionDict | None:
    return await store_new_questions(count, JServiceClient(http, standin.url), questions.store(), budget)


async def shortfall(
    http, standin, count: int, questions: Questions, budget: Budget = BUDGET
) -> QuestionsShortfall:
    with pytest.raises(QuestionsShortfall) as fell_short:
        await collect(http, standin, count, questions, budget)
    return fell_short.value


def gaps(standin) -> list[float]:
    times = standin.behaviour.request_times
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.gen_test
async def test_nothing_asked_returns_the_latest_without_calling_upstream(http, standin, questions):
    questions.add(9)
    previous = await collect(http, standin, 0, questions)
    assert previous is not None and (previous["id"], previous["question"]) == (9, "q9")
    assert standin.behaviour.requested_counts == []


@pytest.mark.gen_test
async def test_new_questions_are_stored_in_batches_of_at_most_100(http, standin, questions):
    standin.behaviour.pool_size = 2_000_000_000  # no id drawn twice across calls (ids stay 32-bit)
    questions.add(0)  # an id the stand-in never draws
    previous = await collect(http, standin, 150, questions)
    assert previous is not None and (previous["id"], previous["question"]) == (0, "q0")
    assert standin.behaviour.requested_counts == [100, 50]
    assert questions.count() == 151


@pytest.mark.gen_test
async def test_repeats_are_asked_again_until_enough_are_new(http, standin, questions):
    standin.behaviour.pool_size = 2_000_000_000  # no id drawn twice across calls (ids stay 32-bit)
    standin.behaviour.repeat_in_batch = True  # each batch holds half as many distinct clues as asked
    assert await collect(http, standin, 8, questions) is None
    assert standin.behaviour.requested_counts == [8, 4, 2, 1]
    assert [len(batch) for batch in questions.batches] == [4, 2, 1, 1]


@pytest.mark.gen_test
async def test_transient_failures_are_retried_after_a_backoff(http, standin, questions):
    standin.behaviour.fail_times = 2  # 503 twice
    await collect(http, standin, 3, questions)
    assert standin.behaviour.requested_counts == [3, 3, 3]
    assert questions.count() == 3


@pytest.mark.gen_test
async def test_retry_after_sets_the_delay(http, standin, questions):
    standin.behaviour.fail_times, standin.behaviour.fail_status = 1, 429
    standin.behaviour.retry_after = "0.3"
    await collect(http, standin, 1, questions)
    assert len(standin.behaviour.requested_counts) == 2
    assert gaps(standin)[0] >= 0.3


@pytest.mark.gen_test(timeout=10)
async def test_a_retry_after_past_the_budget_ends_the_request_at_once(http, standin, questions):
    standin.behaviour.fail_times, standin.behaviour.fail_status = 10, 429
    standin.behaviour.retry_after = "3600"  # waited for, the test would time out
    error = await shortfall(http, standin, 2, questions)
    assert (error.reason, error.detail, error.saved, error.requested) == (
        "bad_gateway",
        "the upstream answered HTTP 429",
        0,
        2,
    )
    assert len(standin.behaviour.requested_counts) == 1


@pytest.mark.gen_test
async def test_a_refusal_is_not_retried(http, standin, questions):
    standin.behaviour.fail_times, standin.behaviour.fail_status = 10, 404
    error = await shortfall(http, standin, 2, questions)
    assert (error.reason, error.detail, error.saved, error.requested) == (
        "bad_gateway",
        "the upstream answered HTTP 404",
        0,
        2,
    )
    assert str(error) == error.detail
    assert standin.behaviour.requested_counts == [2]


@pytest.mark.gen_test
async def test_failures_use_up_the_calls_allowed(http, standin, questions):
    standin.behaviour.fail_times = 100
    error = await shortfall(http, standin, 2, questions, Budget(max_calls=3, seconds=10.0, call_timeout=2.0))
    assert (error.reason, error.detail, error.saved) == ("bad_gateway", "the upstream answered HTTP 503", 0)
    assert standin.behaviour.requested_counts == [2, 2, 2]


@pytest.mark.gen_test
async def test_timeouts_are_retried_within_the_time_budget(http, standin, questions):
    standin.behaviour.hang = True
    budget = Budget(max_calls=50, seconds=2.0, call_timeout=0.3)
    error = await shortfall(http, standin, 1, questions, budget)
    assert error.reason == "timeout" and error.detail.startswith("the upstream did not answer in time: ")
    assert 2 <= len(standin.behaviour.requested_counts) <= 8


@pytest.mark.gen_test
async def test_an_unreachable_upstream_is_retried_until_the_calls_run_out(http, standin, questions):
    standin.behaviour.fail_times = 0
    client = JServiceClient(http, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(QuestionsShortfall) as fell_short:
        await store_new_questions(1, client, questions.store(), Budget(3, 10.0, 1.0))
    assert fell_short.value.reason == "bad_gateway"
    assert fell_short.value.detail.startswith("cannot reach the upstream: ")


@pytest.mark.gen_test
async def test_only_known_questions_end_with_no_new_questions(http, standin, questions):
    standin.behaviour.pool_size = 3
    error = await shortfall(http, standin, 5, questions, Budget(max_calls=4, seconds=10.0, call_timeout=2.0))
    assert (error.reason, error.saved, error.requested) == ("no_new_questions", 3, 5)
    assert error.detail == "the upstream returned only questions that are already stored"
    assert standin.behaviour.requested_counts == [5, 2, 2, 2]


@pytest.mark.gen_test
async def test_only_unusable_questions_end_with_a_bad_gateway(http, standin, questions):
    standin.behaviour.pool_size = 2
    standin.behaviour.blank_ids = frozenset({1, 2})
    error = await shortfall(http, standin, 2, questions, Budget(max_calls=2, seconds=10.0, call_timeout=2.0))
    assert (error.reason, error.saved) == ("bad_gateway", 0)
    assert error.detail == (
        "the upstream returned only unusable questions (2 without a positive integer id, a question and"
        " an answer in storable text)"
    )
    standin.behaviour.garbage = "[]"
    error = await shortfall(http, standin, 2, questions, Budget(max_calls=2, seconds=10.0, call_timeout=2.0))
    assert error.detail == "the upstream returned no questions"


@pytest.fixture
def tokyo() -> Iterator[None]:
    """The process's local time zone at UTC+9, so a local-time conversion shows."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_times_are_utc_whatever_the_local_time_zone(tokyo):
    clue = parse_clue(item(1, created_at="2014-02-11T22:47:18", airdate="2200-12-31T23:59:59Z"))
    assert clue is not None
    assert clue.created_at == datetime(2014, 2, 11, 22, 47, 18, tzinfo=UTC)
    assert clue.airdate == datetime(2200, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.gen_test
async def test_the_base_urls_path_is_kept(http, standin):
    error = await failure(JServiceClient(http, standin.url + "/X/"))
    assert str(error) == "the upstream answered HTTP 404"


@pytest.mark.gen_test
async def test_no_call_allowed_is_a_shortfall_of_no_new_questions(http, standin, questions):
    error = await shortfall(http, standin, 2, questions, Budget(max_calls=0, seconds=10.0, call_timeout=2.0))
    assert (error.reason, error.detail, error.saved, error.requested) == (
        "no_new_questions",
        "the upstream returned only questions that are already stored",
        0,
        2,
    )
    assert standin.behaviour.requested_counts == []


@pytest.mark.gen_test
async def test_known_questions_after_a_failure_are_the_reason_given(http, standin, questions):
    standin.behaviour.pool_size, standin.behaviour.fail_times = 3, 1
    questions.add(1, 2, 3)
    error = await shortfall(http, standin, 2, questions, Budget(max_calls=3, seconds=10.0, call_timeout=2.0))
    assert (error.reason, error.detail) == (
        "no_new_questions",
        "the upstream returned only questions that are already stored",
    )
    assert len(standin.behaviour.requested_counts) == 3


@pytest.mark.gen_test(timeout=10)
async def test_slow_answers_stop_at_the_time_budget(http, standin, questions):
    standin.behaviour.pool_size, standin.behaviour.latency = 3, 0.4
    budget = Budget(max_calls=50, seconds=1.0, call_timeout=2.0)
    questions.add(1, 2, 3)
    error = await shortfall(http, standin, 2, questions, budget)
    # Usually the third call is cut at the deadline (a timeout); on a slow machine the budget may
    # be spent before it starts.
    assert error.reason in ("timeout", "no_new_questions")
    assert 2 <= len(standin.behaviour.requested_counts) <= 3  # not 50


@pytest.mark.gen_test
async def test_each_consecutive_failure_waits_longer(http, standin, questions):
    random.seed(5)  # the jitter drawn again below: 0.62, 0.74, 0.80, 0.94 of each cap
    least = [backoff_delay(failures) for failures in range(4)]
    random.seed(5)
    standin.behaviour.fail_times = 4
    await collect(http, standin, 1, questions)
    assert len(standin.behaviour.requested_counts) == 5
    assert all(gap >= delay for gap, delay in zip(gaps(standin), least, strict=True))
