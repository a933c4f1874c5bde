"""Byte playbooks for the sans-IO PostgreSQL v3 codec (plugins/jitvault_postgres/protocol.py).

The wire bytes come from outside the module under test: hex captured between psql / psycopg and
PostgreSQL 15.20 on loopback (sslmode=disable), or assembled here with struct from the message
formats in the protocol documentation. Every playbook is fed whole, split at every byte and byte
by byte, and the readers must give the same messages each time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import RenderedStatements
from jitvault_postgres import protocol as pg
from jitvault_postgres.frontend import recorded_statements
from jitvault_postgres.protocol import (
    AuthPhase,
    BackendReader,
    FrontendReader,
    Message,
    ProtocolViolation,
    RawMessage,
)

# -- independent encoders (the spec's formats, not the module's builders) ------------------------


def i16(n: int) -> bytes:
    return struct.pack("!h", n)


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def typed(t: bytes, body: bytes = b"") -> bytes:
    return t + i32(len(body) + 4) + body


def untyped(body: bytes) -> bytes:
    return i32(len(body) + 4) + body


# -- captured on loopback from psql 15 / psycopg 3 against PostgreSQL 15.20 ----------------------

PSQL_STARTUP = bytes.fromhex(
    "0000003e000300007573657200706f73746772657300646174616261736500706f737467726573006170706c6963"
    "6174696f6e5f6e616d65006361700000"
)
SERVER_LOGIN = bytes.fromhex(
    "52000000080000000053000000196170706c69636174696f6e5f6e616d6500636170005300000019636c69656e74"
    "5f656e636f64696e670055544638005300000017446174655374796c650049534f2c204d44590053000000266465"
    "6661756c745f7472616e73616374696f6e5f726561645f6f6e6c79006f6666005300000017696e5f686f745f7374"
    "616e646279006f6666005300000019696e74656765725f6461746574696d6573006f6e00530000001b496e746572"
    "76616c5374796c6500706f73746772657300530000001469735f737570657275736572006f6e0053000000197365"
    "727665725f656e636f64696e6700555446380053000000327365727665725f76657273696f6e0031352e32302028"
    "44656269616e2031352e32302d302b646562313275312900530000002373657373696f6e5f617574686f72697a61"
    "74696f6e00706f7374677265730053000000237374616e646172645f636f6e666f726d696e675f737472696e6773"
    "006f6e00530000001554696d655a6f6e65004574632f555443004b0000000c000064dd64e646015a0000000549"
)
PSQL_QUERIES = bytes.fromhex(
    "510000002953454c4543542031204153206f6e652c204e554c4c204153206e2c20277827204153207400"
    "510000000f53454c45435420312f3000"
    "5100000028444f202424424547494e205241495345204e4f5449434520276869273b20454e44242400"
    "510000001e434f5059202853454c45435420322920544f205354444f555400"
    "51000000204c495354454e2063683b204e4f544946592063682c20277061792700"
    "5800000004"
)
SERVER_RESULTS = bytes.fromhex(
    # SELECT 1 AS one, NULL AS n, 'x' AS t
    "540000004400036f6e6500000000000000000000170004ffffffff00006e0000000000000000000019ffffffffff"
    "ff0000740000000000000000000019ffffffffffff0000440000001400030000000131ffffffff00000001784300"
    "00000d53454c4543542031005a0000000549"
    # SELECT 1/0
    "4500000041534552524f5200564552524f5200433232303132004d6469766973696f6e206279207a65726f004669"
    "6e742e63004c3836390052696e74346469760000"
    "5a0000000549"
    # DO $$BEGIN RAISE NOTICE 'hi'; END$$
    "4e00000077534e4f5449434500564e4f5449434500433030303030004d68690057504c2f706753514c2066756e63"
    "74696f6e20696e6c696e655f636f64655f626c6f636b206c696e6520312061742052414953450046706c5f657865"
    "632e63004c333930370052657865635f73746d745f726169736500004300000007444f005a0000000549"
    # COPY (SELECT 2) TO STDOUT
    "480000000900000100006400000006320a6300000004430000000b434f50592031005a0000000549"
    # LISTEN ch; NOTIFY ch, 'pay'
    "430000000b4c495354454e00430000000b4e4f5449465900410000000f000064dd636800706179005a0000000549"
)
PSYCOPG_EXTENDED = bytes.fromhex(
    "50000000395f7067335f300053454c4543542024313a3a696e743420415320612c2024323a3a7465787420415320"
    "6200000200000015000000005300000004"
    "4200000029005f7067335f300000020001000000020000000200050000000768756e746572320001000044000000"
    "065000450000000900000000005300000004"
)
SERVER_EXTENDED = bytes.fromhex(
    "31000000045a0000000554"
    "3200000004540000002e00026100000000000000000000170004ffffffff0000620000000000000000000019ffff"
    "ffffffff00004400000016000200000001350000000768756e74657232430000000d53454c4543542031005a0000"
    "000554"
)


# -- playbook helpers ---------------------------------------------------------------------------


def feed_all(reader: FrontendReader | BackendReader, chunks: Sequence[bytes]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


def assert_playbook(
    make_reader: Callable[[], FrontendReader | BackendReader],
    data: bytes,
    expected: Sequence[Message],
) -> list[Message]:
    """``data`` gives ``expected`` whole, split at every point, and byte by byte."""
    whole = feed_all(make_reader(), [data])
    assert whole == list(expected)
    assert b"".join(m.raw for m in whole) == data  # a relay can forward .raw verbatim
    for cut in range(len(data) + 1):
        reader = make_reader()
        assert feed_all(reader, [data[:cut], data[cut:]]) == whole, f"split at {cut}"
        assert reader.buffered == 0
    bytewise = feed_all(make_reader(), [data[i : i + 1] for i in range(len(data))])
    assert bytewise == whole
    assert [m.raw for m in bytewise] == [m.raw for m in whole]
    return whole


def after_startup() -> FrontendReader:
    reader = FrontendReader()
    reader.feed(PSQL_STARTUP)
    return reader


def authenticated_reader(
    *,
    max_message_length: int = pg.DEFAULT_MAX_MESSAGE_LENGTH,
    passthrough: tuple[bytes, ...] = (b"d",),
) -> FrontendReader:
    reader = FrontendReader(max_message_length=max_message_length, passthrough=passthrough)
    reader.feed(PSQL_STARTUP)
    reader.authenticated()
    return reader


def violation(reader: FrontendReader | BackendReader, *chunks: bytes) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        feed_all(reader, chunks)
    return info.value


# -- frontend: start phase -----------------------------------------------------------------------


def test_psql_startup_packet_gives_protocol_3_0_user_database_and_application_name() -> None:
    (startup,) = assert_playbook(
        FrontendReader,
        PSQL_STARTUP,
        [
            pg.StartupMessage(
                0, {"user": "postgres", "database": "postgres", "application_name": "cap"}
            )
        ],
    )
    assert isinstance(startup, pg.StartupMessage)
    assert (startup.user, startup.database) == ("postgres", "postgres")


def test_startup_without_database_defaults_the_database_to_the_user_name() -> None:
    data = untyped(i32(196608) + cstr("user") + cstr("alice") + b"\x00")
    (startup,) = FrontendReader().feed(data)
    assert isinstance(startup, pg.StartupMessage)
    assert startup.database == "alice"


def test_startup_of_protocol_3_2_reports_minor_version_for_negotiation() -> None:
    data = untyped(i32(196610) + cstr("user") + cstr("bob") + cstr("_pq_.x") + cstr("1") + b"\0")
    (startup,) = FrontendReader().feed(data)
    assert startup == pg.StartupMessage(2, {"user": "bob", "_pq_.x": "1"})


def test_ssl_request_waits_for_the_answer_then_reads_the_startup_packet() -> None:
    ssl = bytes.fromhex("0000000804d2162f")
    assert assert_playbook(FrontendReader, ssl, [pg.SSLRequest()])
    reader = FrontendReader()
    assert reader.feed(ssl) == [pg.SSLRequest()]
    reader.resume_startup()
    assert reader.feed(PSQL_STARTUP)[0] == pg.StartupMessage(
        0, {"user": "postgres", "database": "postgres", "application_name": "cap"}
    )


def test_gssenc_refused_then_ssl_request_is_accepted_once_each() -> None:
    reader = FrontendReader()
    assert reader.feed(bytes.fromhex("0000000804d21630")) == [pg.GSSENCRequest()]
    reader.resume_startup()
    assert reader.feed(bytes.fromhex("0000000804d2162f")) == [pg.SSLRequest()]
    reader.resume_startup()
    assert "twice" in violation(reader, bytes.fromhex("0000000804d2162f")).message


def test_plaintext_pipelined_after_ssl_request_is_refused_cve_2021_23214() -> None:
    ssl = bytes.fromhex("0000000804d2162f")
    assert "before the answer" in violation(FrontendReader(), ssl + PSQL_STARTUP).message
    reader = FrontendReader()
    reader.feed(ssl)
    assert "before the answer" in violation(reader, PSQL_STARTUP[:1]).message


def test_resume_startup_without_a_pending_encryption_request_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        FrontendReader().resume_startup()


def test_cancel_request_gives_pid_and_key_and_hides_the_key_from_repr() -> None:
    data = bytes.fromhex("00000010 04d2162e 000064dd 64e64601")
    (cancel,) = assert_playbook(
        FrontendReader, data, [pg.CancelRequest(25821, b"\x64\xe6\x46\x01")]
    )
    assert "64e64601" not in repr(cancel)
    assert "\\x" not in repr(cancel)


def test_data_after_cancel_request_is_refused() -> None:
    data = bytes.fromhex("00000010 04d2162e 000064dd 64e64601")
    assert "after the end" in violation(FrontendReader(), data + b"Q").message


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (0x00020000, "unsupported protocol version 2.0"),
        (0x00040000, "unsupported protocol version 4.0"),
        (80877105, "unsupported protocol version"),  # 1234.5681: an unknown request code
    ],
)
def test_unknown_startup_codes_are_refused(code: int, reason: str) -> None:
    data = untyped(i32(code) + cstr("user") + cstr("x") + b"\x00")
    assert reason in violation(FrontendReader(), data).message


@pytest.mark.parametrize(
    "header",
    [i32(7), i32(0), i32(-1), i32(-(2**31)), i32(10_001), i32(2**31 - 1)],
    ids=["7", "0", "minus-1", "int-min", "one-over-limit", "int-max"],
)
def test_startup_lengths_out_of_bounds_are_refused_from_the_header_alone(header: bytes) -> None:
    reason = violation(FrontendReader(), header).message
    assert "invalid startup packet length" in reason or "longer than allowed" in reason


def test_startup_length_limit_is_configurable() -> None:
    data = PSQL_STARTUP
    assert len(FrontendReader(max_startup_length=len(data)).feed(data)) == 1
    violation(FrontendReader(max_startup_length=len(data) - 1), data[:4])


@pytest.mark.parametrize(
    "body",
    [
        i32(196608) + cstr("user") + cstr("x"),  # no final terminator
        i32(196608) + cstr("user") + b"x",  # value not NUL-terminated
        i32(196608) + cstr("user") + cstr("x") + b"\x00junk",  # bytes after the terminator
        i32(196608) + cstr("database") + cstr("d") + b"\x00",  # no user
        i32(196608) + cstr("user") + cstr("") + b"\x00",  # empty user
        i32(196608) + cstr("user") + cstr("a") + cstr("user") + cstr("b") + b"\x00",  # twice
        i32(196608) + cstr("user") + b"\xff\xfe\x00\x00",  # user not UTF-8
        i32(196608),  # nothing at all
        bytes.fromhex("04d2162f") + b"\x00",  # SSLRequest with a body
        bytes.fromhex("04d2162e") + i32(1) + b"\x01\x02",  # cancel key too short
    ],
    ids=[
        "unterminated-list",
        "unterminated-value",
        "trailing-bytes",
        "no-user",
        "empty-user",
        "duplicate-key",
        "user-not-utf8",
        "no-params",
        "ssl-request-with-body",
        "short-cancel-key",
    ],
)
def test_malformed_startup_packets_are_refused(body: bytes) -> None:
    violation(FrontendReader(), untyped(body))


# -- frontend: authentication ----------------------------------------------------------------


def test_cleartext_password_message_is_sensitive_and_absent_from_repr() -> None:
    data = typed(b"p", cstr("jv_tok_s3cret"))

    def make() -> FrontendReader:
        reader = after_startup()
        reader.expect_auth(AuthPhase.PASSWORD)
        return reader

    (message,) = assert_playbook(make, data, [pg.PasswordMessage(Sensitive("jv_tok_s3cret"))])
    assert isinstance(message, pg.PasswordMessage)
    assert message.password.reveal() == "jv_tok_s3cret"
    assert "s3cret" not in repr(message)


def test_scram_exchange_reads_initial_response_then_response_per_phase() -> None:
    client_first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA"
    initial = typed(b"p", cstr("SCRAM-SHA-256") + i32(len(client_first)) + client_first)

    def make_initial() -> FrontendReader:
        reader = after_startup()
        reader.expect_auth(AuthPhase.SASL_INITIAL)
        return reader

    (first,) = assert_playbook(
        make_initial, initial, [pg.SASLInitialResponse("SCRAM-SHA-256", client_first)]
    )
    assert "rOprNG" not in repr(first)

    reader = make_initial()
    reader.feed(initial)
    reader.expect_auth(AuthPhase.SASL_RESPONSE)
    assert reader.feed(typed(b"p", client_final)) == [pg.SASLResponse(client_final)]
    reader.authenticated()
    assert reader.feed(typed(b"Q", cstr("SELECT 1"))) == [pg.Query("SELECT 1")]


def test_sasl_initial_response_with_length_minus_one_has_no_data() -> None:
    reader = after_startup()
    reader.expect_auth(AuthPhase.SASL_INITIAL)
    assert reader.feed(typed(b"p", cstr("SCRAM-SHA-256") + i32(-1))) == [
        pg.SASLInitialResponse("SCRAM-SHA-256", None)
    ]


@pytest.mark.parametrize(
    "body",
    [
        cstr("SCRAM-SHA-256") + i32(40) + b"n,,n=,r=abc",  # declares more than it carries
        cstr("SCRAM-SHA-256") + i32(3) + b"n,,n=",  # carries more than it declares
        cstr("SCRAM-SHA-256") + i32(-2),  # negative length other than -1
        cstr("SCRAM-SHA-256") + b"\x00\x00",  # length cut short
        b"SCRAM-SHA-256",  # mechanism not terminated
    ],
    ids=["truncated-data", "trailing-data", "negative-length", "short-length", "no-nul"],
)
def test_malformed_sasl_initial_responses_are_refused(body: bytes) -> None:
    reader = after_startup()
    reader.expect_auth(AuthPhase.SASL_INITIAL)
    violation(reader, typed(b"p", body))


def test_password_message_before_the_server_asked_is_refused() -> None:
    assert "before it was asked" in violation(after_startup(), typed(b"p", cstr("pw"))).message


def test_second_password_message_without_a_new_request_is_refused() -> None:
    reader = after_startup()
    reader.expect_auth(AuthPhase.PASSWORD)
    violation(reader, typed(b"p", cstr("one")) + typed(b"p", cstr("two")))


def test_query_during_authentication_is_refused() -> None:
    reader = after_startup()
    reader.expect_auth(AuthPhase.PASSWORD)
    assert "during authentication" in violation(reader, typed(b"Q", cstr("SELECT 1"))).message


def test_password_message_longer_than_the_auth_limit_is_refused_from_the_header() -> None:
    reader = FrontendReader(max_auth_length=100)
    reader.feed(PSQL_STARTUP)
    reader.expect_auth(AuthPhase.PASSWORD)
    violation(reader, b"p" + i32(101))


def test_password_not_utf8_or_with_trailing_bytes_is_refused() -> None:
    for body in (b"\xff\xfe\x00", cstr("pw") + b"x"):
        reader = after_startup()
        reader.expect_auth(AuthPhase.PASSWORD)
        violation(reader, typed(b"p", body))


def test_auth_phase_calls_outside_authentication_are_refused() -> None:
    with pytest.raises(ProtocolViolation):
        FrontendReader().expect_auth(AuthPhase.PASSWORD)
    with pytest.raises(ProtocolViolation):
        authenticated_reader().authenticated()


# -- frontend: typed messages --------------------------------------------------------------------


def test_psql_simple_queries_parse_to_their_text_then_terminate() -> None:
    assert_playbook(
        authenticated_reader,
        PSQL_QUERIES,
        [
            pg.Query("SELECT 1 AS one, NULL AS n, 'x' AS t"),
            pg.Query("SELECT 1/0"),
            pg.Query("DO $$BEGIN RAISE NOTICE 'hi'; END$$"),
            pg.Query("COPY (SELECT 2) TO STDOUT"),
            pg.Query("LISTEN ch; NOTIFY ch, 'pay'"),
            pg.Terminate(),
        ],
    )


def test_psycopg_extended_query_exposes_statement_and_types_but_not_parameter_values() -> None:
    messages = assert_playbook(
        authenticated_reader,
        PSYCOPG_EXTENDED,
        [
            pg.Parse("_pg3_0", "SELECT $1::int4 AS a, $2::text AS b", (21, 0)),
            pg.Sync(),
            pg.Bind("", "_pg3_0", (1, 0), (b"\x00\x05", b"hunter2"), (0,)),
            pg.Describe("P", ""),
            pg.Execute("", 0),
            pg.Sync(),
        ],
    )
    bind = messages[2]
    assert isinstance(bind, pg.Bind)
    assert bind.params[1] == b"hunter2"
    assert all("hunter2" not in repr(m) for m in messages)


def test_remaining_frontend_messages_parse_from_spec_layouts() -> None:
    data = b"".join(
        [
            typed(b"C", b"S" + cstr("stmt")),
            typed(b"H"),
            typed(b"D", b"S" + cstr("stmt")),
            typed(b"F", i32(1598) + i16(1) + i16(1) + i16(2) + i32(-1) + i32(1) + b"z" + i16(0)),
            typed(b"d", b"1\tx\n"),
            typed(b"c"),
            typed(b"f", cstr("client gave up")),
            typed(b"B", cstr("p1") + cstr("") + i16(0) + i16(1) + i32(-1) + i16(0)),
        ]
    )
    messages = assert_playbook(
        authenticated_reader,
        data,
        [
            pg.Close("S", "stmt"),
            pg.Flush(),
            pg.Describe("S", "stmt"),
            pg.FunctionCall(1598, (1,), (None, b"z"), 0),
            RawMessage(b"d", parser=pg.parse_frontend_message),
            pg.CopyDone(),
            pg.CopyFail("client gave up"),
            pg.Bind("p1", "", (), (None,), ()),
        ],
    )
    copy = messages[4]
    assert isinstance(copy, RawMessage)
    assert copy.parse() == pg.CopyData(b"1\tx\n")


def test_copy_data_is_parsed_when_not_passed_through() -> None:
    reader = authenticated_reader(passthrough=())
    assert reader.feed(typed(b"d", b"row")) == [pg.CopyData(b"row")]


def test_one_message_chunk_is_returned_without_copying() -> None:
    chunk = typed(b"Q", cstr("SELECT 1"))
    (message,) = authenticated_reader().feed(chunk)
    assert message.raw is chunk


@pytest.mark.parametrize(
    "data",
    [
        b"Q" + i32(3),
        b"Q" + i32(0),
        b"Q" + i32(-1),
        b"Q" + i32(-(2**31)),
        b"Q" + i32(2**30 + 1),  # over the 1 GiB default
        b"Q" + i32(2**31 - 1),
    ],
    ids=["3", "0", "minus-1", "int-min", "over-1gib", "int-max"],
)
def test_typed_lengths_out_of_bounds_are_refused_from_the_header_alone(data: bytes) -> None:
    reason = violation(authenticated_reader(), data).message
    assert "invalid length" in reason or "longer than allowed" in reason


def test_typed_length_limit_is_configurable() -> None:
    ok = typed(b"Q", cstr("x" * 95))  # length 4 + 96 = 100
    assert len(authenticated_reader(max_message_length=100).feed(ok)) == 1
    violation(authenticated_reader(max_message_length=99), ok[:5])


@pytest.mark.parametrize(
    "data",
    [
        typed(b"Q", b"SELECT 1"),  # not NUL-terminated
        typed(b"Q", cstr("SELECT 1") + b"x"),  # trailing bytes
        typed(b"P", cstr("s") + cstr("SELECT $1") + i16(2) + i32(23)),  # types truncated
        typed(b"P", cstr("s") + cstr("q") + i16(-1)),  # negative count
        typed(b"B", cstr("") + cstr("") + i16(1) + i16(7) + i16(0) + i16(0)),  # format 7
        typed(b"B", cstr("") + cstr("") + i16(0) + i16(1) + i32(-2) + i16(0)),  # length -2
        typed(b"B", cstr("") + cstr("") + i16(0) + i16(1) + i32(10) + b"abc" + i16(0)),
        typed(b"E", cstr("")),  # max_rows missing
        typed(b"D", b"X" + cstr("name")),  # neither S nor P
        typed(b"C", b""),  # empty
        typed(b"S", b"\x00"),  # Sync has no body
        typed(b"X", b"\x00"),
        typed(b"?", b""),  # unknown type
        typed(b"p", cstr("late password")),  # 'p' after authentication
    ],
    ids=[
        "query-no-nul",
        "query-trailing",
        "parse-truncated-types",
        "parse-negative-count",
        "bind-bad-format",
        "bind-negative-length",
        "bind-truncated-value",
        "execute-truncated",
        "describe-bad-kind",
        "close-empty",
        "sync-with-body",
        "terminate-with-body",
        "unknown-type",
        "password-after-auth",
    ],
)
def test_malformed_frontend_messages_are_refused(data: bytes) -> None:
    violation(authenticated_reader(), data)


def test_garbage_after_terminate_is_refused_in_the_same_or_a_later_chunk() -> None:
    assert "after the end" in violation(authenticated_reader(), typed(b"X") + b"\x00").message
    reader = authenticated_reader()
    assert reader.feed(typed(b"X")) == [pg.Terminate()]
    violation(reader, b"Q")


def test_a_failed_reader_refuses_everything_after() -> None:
    reader = authenticated_reader()
    violation(reader, b"Q" + i32(2))
    assert "already failed" in violation(reader, typed(b"S")).message


def test_protocol_violation_is_a_validation_error() -> None:
    assert issubclass(ProtocolViolation, ValidationError)


# -- backend -----------------------------------------------------------------------------------


def test_postgres15_login_gives_auth_ok_parameters_key_and_ready() -> None:
    messages = feed_all(BackendReader(), [SERVER_LOGIN])
    assert messages[0] == pg.AuthenticationOk()
    params = {m.name: m.value for m in messages if isinstance(m, pg.ParameterStatus)}
    assert params["server_version"] == "15.20 (Debian 15.20-0+deb12u1)"
    assert params["client_encoding"] == "UTF8"
    assert len(params) == 13
    assert messages[-2] == pg.BackendKeyData(25821, bytes.fromhex("64e64601"))
    assert messages[-1] == pg.ReadyForQuery("I")


def test_postgres15_login_survives_every_split_point() -> None:
    whole = feed_all(BackendReader(), [SERVER_LOGIN])
    assert len(whole) == 16
    assert_playbook(BackendReader, SERVER_LOGIN, whole)


def test_postgres15_results_errors_notices_copy_and_notifications_parse() -> None:
    int4, text = 23, 25
    messages = assert_playbook(
        BackendReader,
        SERVER_RESULTS,
        [
            pg.RowDescription(
                (
                    pg.FieldDescription("one", 0, 0, int4, 4, -1, 0),
                    pg.FieldDescription("n", 0, 0, text, -1, -1, 0),
                    pg.FieldDescription("t", 0, 0, text, -1, -1, 0),
                )
            ),
            RawMessage(b"D", parser=pg.parse_backend_message),
            pg.CommandComplete("SELECT 1"),
            pg.ReadyForQuery("I"),
            pg.ErrorResponse(
                {
                    "S": "ERROR",
                    "V": "ERROR",
                    "C": "22012",
                    "M": "division by zero",
                    "F": "int.c",
                    "L": "869",
                    "R": "int4div",
                }
            ),
            pg.ReadyForQuery("I"),
            pg.NoticeResponse(
                {
                    "S": "NOTICE",
                    "V": "NOTICE",
                    "C": "00000",
                    "M": "hi",
                    "W": "PL/pgSQL function inline_code_block line 1 at RAISE",
                    "F": "pl_exec.c",
                    "L": "3907",
                    "R": "exec_stmt_raise",
                }
            ),
            pg.CommandComplete("DO"),
            pg.ReadyForQuery("I"),
            pg.CopyOutResponse(0, (0,)),
            RawMessage(b"d", parser=pg.parse_backend_message),
            pg.CopyDone(),
            pg.CommandComplete("COPY 1"),
            pg.ReadyForQuery("I"),
            pg.CommandComplete("LISTEN"),
            pg.CommandComplete("NOTIFY"),
            pg.NotificationResponse(25821, "ch", "pay"),
            pg.ReadyForQuery("I"),
        ],
    )
    row, copy, error = messages[1], messages[10], messages[4]
    assert isinstance(row, RawMessage)
    assert isinstance(copy, RawMessage)
    assert row.parse() == pg.DataRow((b"1", None, b"x"))
    assert copy.parse() == pg.CopyData(b"2\n")
    assert isinstance(error, pg.ErrorResponse)
    assert (error.severity, error.sqlstate, error.message) == ("ERROR", "22012", "division by zero")
    assert error.detail is None
    assert error.hint is None


def test_postgres15_extended_query_replies_parse_including_rows_when_asked() -> None:
    messages = assert_playbook(
        lambda: BackendReader(passthrough=()),
        SERVER_EXTENDED,
        [
            pg.ParseComplete(),
            pg.ReadyForQuery("T"),
            pg.BindComplete(),
            pg.RowDescription(
                (
                    pg.FieldDescription("a", 0, 0, 23, 4, -1, 0),
                    pg.FieldDescription("b", 0, 0, 25, -1, -1, 0),
                )
            ),
            pg.DataRow((b"5", b"hunter2")),
            pg.CommandComplete("SELECT 1"),
            pg.ReadyForQuery("T"),
        ],
    )
    assert all("hunter2" not in repr(m) for m in messages)


def test_authentication_requests_parse_from_spec_layouts() -> None:
    data = b"".join(
        [
            typed(b"R", i32(3)),
            typed(b"R", i32(5) + b"\x01\x02\x03\x04"),
            typed(b"R", i32(10) + cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\x00"),
            typed(b"R", i32(11) + b"r=abc,s=c2FsdA==,i=4096"),
            typed(b"R", i32(12) + b"v=c2ln"),
            typed(b"R", i32(7)),
            typed(b"R", i32(0)),
        ]
    )
    assert_playbook(
        BackendReader,
        data,
        [
            pg.AuthenticationCleartextPassword(),
            pg.AuthenticationMD5Password(b"\x01\x02\x03\x04"),
            pg.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
            pg.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
            pg.AuthenticationSASLFinal(b"v=c2ln"),
            pg.AuthenticationOther(7, b""),
            pg.AuthenticationOk(),
        ],
    )


def test_other_backend_messages_parse_from_spec_layouts() -> None:
    data = b"".join(
        [
            typed(b"I"),
            typed(b"3"),
            typed(b"n"),
            typed(b"s"),
            typed(b"t", i16(2) + i32(23) + i32(25)),
            typed(b"G", b"\x01" + i16(2) + i16(1) + i16(1)),
            typed(b"W", b"\x00" + i16(0)),
            typed(b"V", i32(2) + b"ok"),
            typed(b"v", i32(0) + i32(1) + cstr("_pq_.unknown")),
            typed(b"K", i32(7) + bytes(32)),  # protocol 3.2: a longer cancel key
        ]
    )
    assert_playbook(
        BackendReader,
        data,
        [
            pg.EmptyQueryResponse(),
            pg.CloseComplete(),
            pg.NoData(),
            pg.PortalSuspended(),
            pg.ParameterDescription((23, 25)),
            pg.CopyInResponse(1, (1, 1)),
            pg.CopyBothResponse(0, ()),
            pg.FunctionCallResponse(b"ok"),
            pg.NegotiateProtocolVersion(0, ("_pq_.unknown",)),
            pg.BackendKeyData(7, bytes(32)),
        ],
    )


@pytest.mark.parametrize(
    "data",
    [
        typed(b"R", i32(99)),  # unknown auth method
        typed(b"R", i32(0) + b"\x00"),  # AuthenticationOk with a body
        typed(b"R", i32(5) + b"\x01\x02"),  # short md5 salt
        typed(b"R", i32(10) + b"\x00"),  # SASL with no mechanism
        typed(b"R", i32(10) + cstr("SCRAM-SHA-256")),  # SASL list not terminated
        typed(b"R", b"\x00\x00"),  # method cut short
        typed(b"Z", b"X"),  # bad transaction status
        typed(b"Z", b""),
        typed(b"K", i32(1) + b"\x00\x01"),  # cancel key too short
        typed(b"E", b"SERROR\x00"),  # fields not terminated
        typed(b"E", b"SERROR"),  # field not NUL-terminated
        typed(b"D", i16(1) + i32(5) + b"ab"),  # value truncated
        typed(b"D", i16(-1)),  # negative column count
        typed(b"T", i16(1) + cstr("a") + i32(0)),  # field description truncated
        typed(b"H", b"\x02" + i16(0)),  # bad copy format
        typed(b"v", i32(0) + i32(2**30)),  # absurd option count
        typed(b"A", i32(1) + cstr("ch")),  # payload missing
        typed(b"x", b""),  # unknown type
    ],
    ids=[
        "auth-unknown",
        "auth-ok-body",
        "md5-short-salt",
        "sasl-empty",
        "sasl-unterminated",
        "auth-short",
        "rfq-bad-status",
        "rfq-empty",
        "short-cancel-key",
        "error-unterminated-fields",
        "error-unterminated-field",
        "datarow-truncated",
        "datarow-negative",
        "rowdesc-truncated",
        "copy-bad-format",
        "negotiate-count",
        "notification-truncated",
        "unknown-type",
    ],
)
def test_malformed_backend_messages_are_refused(data: bytes) -> None:
    violation(BackendReader(passthrough=()), data)


def test_passed_through_backend_messages_defer_body_checks_to_parse() -> None:
    (raw,) = BackendReader().feed(typed(b"D", i16(1) + i32(5) + b"ab"))
    assert isinstance(raw, RawMessage)
    with pytest.raises(ProtocolViolation):
        raw.parse()


def test_backend_lengths_out_of_bounds_are_refused_from_the_header_alone() -> None:
    for header in (b"Z" + i32(3), b"Z" + i32(-5), b"I" + i32(0), b"D" + i32(2**31 - 1)):
        reason = violation(BackendReader(), header).message
        assert "invalid length" in reason or "longer than allowed" in reason
    violation(BackendReader(max_message_length=64), b"D" + i32(65))


def test_ssl_answer_is_read_as_one_byte_before_typed_messages() -> None:
    reader = BackendReader()
    reader.expect_encryption_answer()
    assert reader.feed(b"S") == [pg.SSLAnswer(True)]
    assert reader.feed(typed(b"R", i32(0))) == [pg.AuthenticationOk()]
    refused = BackendReader()
    refused.expect_encryption_answer()
    assert refused.feed(b"N") == [pg.SSLAnswer(False)]


def test_bytes_after_the_ssl_answer_are_refused_cve_2021_23222() -> None:
    reader = BackendReader()
    reader.expect_encryption_answer()
    assert "after its answer" in violation(reader, b"S" + typed(b"R", i32(0))).message


def test_old_server_answering_ssl_request_with_an_error_is_parsed() -> None:
    reader = BackendReader()
    reader.expect_encryption_answer()
    error = typed(b"E", b"SFATAL\x00Munsupported frontend protocol\x00\x00")
    (message,) = reader.feed(error)
    assert isinstance(message, pg.ErrorResponse)
    assert message.severity == "FATAL"


def test_invalid_ssl_answer_is_refused() -> None:
    reader = BackendReader()
    reader.expect_encryption_answer()
    violation(reader, b"R")


# -- builders (checked against captured and hand-assembled bytes) -------------------------------


def test_frontend_builders_match_captured_and_spec_bytes() -> None:
    params = {"user": "postgres", "database": "postgres", "application_name": "cap"}
    assert pg.startup_message(params) == PSQL_STARTUP
    assert pg.query("SELECT 1/0") == bytes.fromhex("510000000f53454c45435420312f3000")
    assert pg.terminate() == bytes.fromhex("5800000004")
    assert pg.sync() == bytes.fromhex("5300000004")
    assert pg.ssl_request() == bytes.fromhex("0000000804d2162f")
    assert pg.gssenc_request() == bytes.fromhex("0000000804d21630")
    assert pg.cancel_request(25821, bytes.fromhex("64e64601")) == bytes.fromhex(
        "0000001004d2162e000064dd64e64601"
    )
    assert pg.password_message(Sensitive("pw")) == typed(b"p", cstr("pw"))
    assert pg.password_message(b"md5abc") == typed(b"p", cstr("md5abc"))
    assert pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x") == typed(
        b"p", cstr("SCRAM-SHA-256") + i32(9) + b"n,,n=,r=x"
    )
    assert pg.sasl_initial_response("SCRAM-SHA-256", None) == typed(
        b"p", cstr("SCRAM-SHA-256") + i32(-1)
    )
    assert pg.sasl_response(b"c=biws") == typed(b"p", b"c=biws")


def test_backend_builders_match_captured_and_spec_bytes() -> None:
    assert pg.authentication_ok() == SERVER_LOGIN[:9]
    assert pg.parameter_status("application_name", "cap") == SERVER_LOGIN[9 : 9 + 26]
    assert pg.backend_key_data(25821, bytes.fromhex("64e64601")) == SERVER_LOGIN[-19:-6]
    assert pg.ready_for_query("I") == SERVER_LOGIN[-6:]
    assert pg.ready_for_query("T") == bytes.fromhex("5a0000000554")
    assert pg.authentication_cleartext_password() == typed(b"R", i32(3))
    assert pg.authentication_md5_password(b"salt") == typed(b"R", i32(5) + b"salt")
    assert pg.authentication_sasl(["SCRAM-SHA-256"]) == typed(
        b"R", i32(10) + cstr("SCRAM-SHA-256") + b"\x00"
    )
    assert pg.authentication_sasl_continue(b"r=x") == typed(b"R", i32(11) + b"r=x")
    assert pg.authentication_sasl_final(b"v=x") == typed(b"R", i32(12) + b"v=x")
    assert pg.negotiate_protocol_version(0, ["_pq_.a"]) == typed(
        b"v", i32(0) + i32(1) + cstr("_pq_.a")
    )
    assert (pg.encryption_refused(), pg.encryption_accepted()) == (b"N", b"S")


def test_error_builder_writes_severity_twice_then_code_message_detail_hint() -> None:
    assert pg.error_response("ERROR", "22012", "boom", detail="d", hint="h") == typed(
        b"E", b"SERROR\x00VERROR\x00C22012\x00Mboom\x00Dd\x00Hh\x00\x00"
    )
    assert pg.notice_response("WARNING", "01000", "careful") == typed(
        b"N", b"SWARNING\x00VWARNING\x00C01000\x00Mcareful\x00\x00"
    )


def test_authentication_failure_is_worded_exactly_like_postgres_without_detail() -> None:
    data = pg.authentication_failed_error("alice")
    assert data == typed(
        b"E",
        b'SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed for user "alice"\x00\x00',
    )


def test_grant_expiry_error_is_fatal_admin_shutdown() -> None:
    (message,) = BackendReader().feed(pg.grant_expired_error())
    assert isinstance(message, pg.ErrorResponse)
    assert (message.severity, message.sqlstate) == ("FATAL", "57P01")
    assert message.fields["S"] == "FATAL"
    assert "access grant expired" in message.message


def test_protocol_violation_error_carries_the_reason_as_fatal_08p01() -> None:
    (message,) = BackendReader().feed(pg.protocol_violation_error(ProtocolViolation("bad")))
    assert isinstance(message, pg.ErrorResponse)
    assert (message.severity, message.sqlstate, message.message) == ("FATAL", "08P01", "bad")


@pytest.mark.parametrize(
    "build",
    [
        lambda: pg.query("SELECT 1\x00; DROP TABLE x"),
        lambda: pg.startup_message({"user": "a\x00b"}),
        lambda: pg.startup_message({"database": "d"}),
        lambda: pg.error_response("ERROR", "2201", "short code"),
        lambda: pg.error_response("ERROR", "2201b", "lower-case code"),
        lambda: pg.error_response("NOTICE", "00000", "not an error severity"),
        lambda: pg.notice_response("FATAL", "00000", "not a notice severity"),
        lambda: pg.authentication_failed_error("a\x00b"),
        lambda: pg.authentication_md5_password(b"abc"),
        lambda: pg.authentication_sasl([]),
        lambda: pg.ready_for_query("X"),
        lambda: pg.backend_key_data(1, b"ab"),
    ],
)
def test_builders_refuse_values_that_would_corrupt_the_stream(build: Callable[[], bytes]) -> None:
    with pytest.raises(ProtocolViolation):
        build()


# -- fuzz: nothing but ProtocolViolation, whatever arrives -----------------------------------


def _frontend_readers() -> list[Callable[[], FrontendReader]]:
    def in_phase(phase: AuthPhase) -> Callable[[], FrontendReader]:
        def make() -> FrontendReader:
            reader = after_startup()
            reader.expect_auth(phase)
            return reader

        return make

    return [
        FrontendReader,
        after_startup,
        in_phase(AuthPhase.PASSWORD),
        in_phase(AuthPhase.SASL_INITIAL),
        in_phase(AuthPhase.SASL_RESPONSE),
        lambda: authenticated_reader(passthrough=()),
    ]


FRONTEND_TYPES = b"pQPBEDSHCFdcfX"
BACKEND_TYPES = b"RSKZENCTDI123nstGHWdcAVv"


@st.composite
def framed(draw: st.DrawFn, types: bytes) -> bytes:
    """Well-framed messages of known types with random bodies: they reach the body parsers."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        body = draw(st.binary(max_size=40))
        out += bytes([draw(st.sampled_from(types))]) + i32(len(body) + 4) + body
    return out


def _only_violations(reader: FrontendReader | BackendReader, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            reader.feed(chunk)
    except ProtocolViolation:
        pass


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    which=st.integers(0, 5),
    chunks=st.lists(st.binary(max_size=64) | framed(FRONTEND_TYPES), max_size=4),
)
def test_random_bytes_into_the_frontend_reader_raise_only_protocol_violation(
    which: int, chunks: list[bytes]
) -> None:
    _only_violations(_frontend_readers()[which](), chunks)


@FUZZ
@given(
    passthrough=st.booleans(),
    ssl_answer=st.booleans(),
    chunks=st.lists(st.binary(max_size=64) | framed(BACKEND_TYPES), max_size=4),
)
def test_random_bytes_into_the_backend_reader_raise_only_protocol_violation(
    passthrough: bool, ssl_answer: bool, chunks: list[bytes]
) -> None:
    reader = BackendReader() if passthrough else BackendReader(passthrough=())
    if ssl_answer:
        reader.expect_encryption_answer()
    _only_violations(reader, chunks)


@FUZZ
@given(body=st.binary(max_size=80), code=st.sampled_from([196608, 196610, 80877102, 80877103]))
def test_random_startup_bodies_raise_only_protocol_violation(body: bytes, code: int) -> None:
    _only_violations(FrontendReader(), [untyped(i32(code) + body)])


# -------------------------------------------------------------- the relay's client side


def _typed(message_type: bytes, body: bytes) -> bytes:
    return message_type + struct.pack("!i", len(body) + 4) + body


def _parse_message(statement: str, query: str) -> bytes:
    return _typed(b"P", statement.encode() + b"\0" + query.encode() + b"\0" + b"\0\0")


def _bind_with_secret(value: bytes, statement: bytes = b"") -> bytes:
    params = b"\0\0" + b"\0\x01" + struct.pack("!i", len(value)) + value + b"\0\0"
    return _typed(b"B", b"\0" + statement + b"\0" + params)


def _relay_all(
    relay: pg.FrontendRelay, stream: bytes, cuts: Sequence[int]
) -> tuple[bytes, list[pg.Surfaced], int]:
    """Feed ``stream`` cut at ``cuts``; what was forwarded, what surfaced, the most held."""
    forwarded, surfaced, most_held, pos = bytearray(), list[pg.Surfaced](), 0, 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= pos:
            continue
        out, messages = relay.feed(stream[pos:end])
        forwarded += out
        surfaced += messages
        most_held = max(most_held, relay.buffered)
        pos = end
    return bytes(forwarded), surfaced, most_held


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=40))
def test_the_relay_forwards_every_byte_unchanged_and_surfaces_query_texts_however_cut(
    cuts: list[int],
) -> None:
    stream = b"".join(
        [
            pg.query("SELECT 1"),
            _parse_message("", "SELECT $1::int"),
            _bind_with_secret(b"hunter2-secret"),
            _typed(b"E", b"\0\0\0\0\0"),
            pg.sync(),
            _parse_message("s1", "SELECT $1::text"),
            _bind_with_secret(b"hunter2-secret" * 1000, statement=b"s1"),
            _typed(b"E", b"\0\0\0\0\0"),
            pg.sync(),
            _bind_with_secret(b"hunter2-secret"),
            _typed(b"E", b"\0\0\0\0\0"),
            pg.sync(),
            _typed(b"d", b"x" * 9000),
            pg.query("SELECT '" + "y" * 5000 + "'"),
            pg.terminate(),
        ]
    )
    forwarded, surfaced, _ = _relay_all(pg.FrontendRelay(), stream, cuts)
    assert forwarded == stream
    assert surfaced == [
        (b"Q", b"", b"SELECT 1"),
        (b"P", b"", b"SELECT $1::int"),
        (b"S", b"", b""),
        (b"P", b"s1", b"SELECT $1::text"),
        (b"B", b"s1", b""),
        (b"S", b"", b""),
        (b"B", b"", b""),
        (b"S", b"", b""),
        (b"Q", b"", b"SELECT '" + b"y" * 5000 + b"'"),
        (b"X", b"", b""),
    ]
    assert "hunter2" not in repr(surfaced)


def test_each_bind_of_the_unnamed_statement_but_the_first_after_its_parse_is_a_run_again() -> None:
    """The unnamed statement's Parse records its first run; each later Bind of it (without a new
    Parse) is a run again, surfaced with its empty name, so that parsing it once and binding it
    many times cannot hide the runs. A named Parse leaves the unnamed statement as it was."""
    unnamed = _bind_with_secret(b"v")
    stream = b"".join(
        [
            _parse_message("", "DELETE FROM t WHERE id = $1"),
            unnamed,
            unnamed,
            _parse_message("s1", "SELECT 1"),
            unnamed,
            pg.sync(),
            _parse_message("", "SELECT $1::text"),
            _parse_message("", "SELECT $1::int"),
            unnamed,
            _parse_message("", "SELECT 2"),
            _parse_message("s2", "SELECT 3"),
            unnamed,
            unnamed,
            pg.sync(),
        ]
    )
    expected = [
        (b"P", b"", b"DELETE FROM t WHERE id = $1"),
        (b"B", b"", b""),
        (b"P", b"s1", b"SELECT 1"),
        (b"B", b"", b""),
        (b"S", b"", b""),
        (b"P", b"", b"SELECT $1::text"),
        (b"P", b"", b"SELECT $1::int"),
        (b"P", b"", b"SELECT 2"),
        (b"P", b"s2", b"SELECT 3"),
        (b"B", b"", b""),
        (b"S", b"", b""),
    ]
    for cut in range(len(stream)):
        assert _feed_in_two(stream, cut) == expected


def test_an_unnamed_parse_whose_cycle_ends_unbound_was_a_preparation_its_next_bind_a_run() -> None:
    """libpq's PQprepare then PQexecPrepared (and pgx's describe-exec mode) send Parse, Describe
    and Sync, then Bind, Execute and Sync. The Parse's cycle ended with no run, so the first Bind in
    a later cycle is a run again, in a cycle (and with a duration) of its own; a Parse bound in
    its own cycle is still its first run, whatever comes between (a FunctionCall ends a cycle
    too)."""
    describe, execute = _typed(b"D", b"S\0"), _typed(b"E", b"\0\0\0\0\0")
    unnamed = _bind_with_secret(b"v")
    stream = b"".join(
        [
            _parse_message("", "SELECT pg_sleep($1)"),
            describe,
            pg.sync(),
            unnamed,
            execute,
            pg.sync(),
            _parse_message("", "SELECT $1::int"),
            describe,
            unnamed,
            execute,
            pg.sync(),
            _parse_message("", "SELECT $1::text"),
            _typed(b"F", b"\0\0\x04\xd2\0\0\0\0\0\0"),
            unnamed,
            pg.sync(),
        ]
    )
    expected = [
        (b"P", b"", b"SELECT pg_sleep($1)"),
        (b"S", b"", b""),
        (b"B", b"", b""),
        (b"S", b"", b""),
        (b"P", b"", b"SELECT $1::int"),
        (b"S", b"", b""),
        (b"P", b"", b"SELECT $1::text"),
        (b"F", b"", b""),
        (b"B", b"", b""),
        (b"S", b"", b""),
    ]
    for cut in range(len(stream)):
        assert _feed_in_two(stream, cut) == expected


def test_the_python_relay_records_a_run_of_the_unnamed_statement_by_its_empty_name() -> None:
    """What the Python relay records of the runs above: the native relay's form (its engine
    test), each run an ``execute`` whose name is empty."""
    unnamed = _bind_with_secret(b"hunter2")
    stream = _parse_message("", "SELECT $1::text") + unnamed + unnamed + pg.sync()
    surfaced = pg.FrontendRelay().feed(stream)[1]
    rendered = recorded_statements(surfaced)
    assert isinstance(rendered, RenderedStatements)
    assert rendered.count == 2
    assert json.loads(b"[" + rendered.json + b"]") == [
        {"kind": "extended", "text": "SELECT $1::text"},
        {"kind": "execute", "name": ""},
    ]


def test_the_relay_holds_only_a_binds_names_and_streams_its_values() -> None:
    """A Bind with a huge value (a bytea upload) is held only until its names are in: the
    statement's name is surfaced, and its values stream through as they come."""
    value_size = 8 << 20
    head = b"B" + struct.pack("!i", 4 + 1 + 3 + 2 + 2 + 4 + value_size + 2)
    relay = pg.FrontendRelay()
    out, messages = relay.feed(head + b"\0s")  # the statement's name is not complete yet
    assert (out, messages) == (b"", [])
    out, messages = relay.feed(b"1\0" + b"\0\0\0\x01" + struct.pack("!i", value_size))
    assert messages == [(b"B", b"s1", b"")]
    assert relay.buffered == 0
    chunk = b"v" * 65536
    for _ in range(value_size // len(chunk)):
        out, messages = relay.feed(chunk)
        assert (out, messages) == (chunk, [])
        assert relay.buffered == 0
    out, messages = relay.feed(b"\0\0" + pg.sync())
    assert messages == [(b"S", b"", b"")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"portal", "malformed Bind: string is not NUL-terminated"),
        (b"portal\0stmt", "malformed Bind: string is not NUL-terminated"),
        (b"p" * 1024, "malformed Bind: string is not NUL-terminated"),
        (b"p" * 1025, "names longer than 1024 bytes"),
        (b"p" * 600 + b"\0" + b"s" * 423 + b"\0\0\0\0\0\0\0", "names longer than 1024 bytes"),
    ],
)
def test_a_bind_whose_names_do_not_end_is_refused_however_it_arrives(
    body: bytes, reason: str
) -> None:
    raw = _typed(b"B", body)
    for cut in (len(raw), 5, 700):
        with pytest.raises(pg.ProtocolViolation, match=reason):
            _feed_in_two(raw, cut)
    # names that end within the first 1024 bytes are taken, however the Bind arrives
    raw = _typed(b"B", b"p" * 600 + b"\0" + b"s" * 422 + b"\0\0\0\0\0\0\0")
    for cut in (len(raw), 5, 700):
        assert _feed_in_two(raw, cut) == [(b"B", b"s" * 422, b"")]


def _feed_in_two(raw: bytes, cut: int) -> list[pg.Surfaced]:
    relay = pg.FrontendRelay()
    return relay.feed(raw[:cut])[1] + relay.feed(raw[cut:])[1]


def test_the_relay_streams_a_huge_copy_message_without_holding_it() -> None:
    size = 64 << 20
    relay = pg.FrontendRelay()
    out, messages = relay.feed(b"d" + struct.pack("!i", size + 4))
    assert (out, messages) == (b"d" + struct.pack("!i", size + 4), [])
    chunk = b"z" * 65536
    for _ in range(size // len(chunk)):
        out, messages = relay.feed(chunk)
        assert out is chunk  # no copy
        assert relay.buffered == 0
    out, messages = relay.feed(pg.query("SELECT 2"))
    assert messages == [(b"Q", b"", b"SELECT 2")]


_SURFACED_BODIES = [
    b"SELECT 1\0",
    b"SELECT 1",
    b"SELECT 1\0\0",
    b"\0",
    b"",
    b"\xff\xfe caf\xc3\xa9\0",
    b"s1\0SELECT $1\0\0\x01\0\0\0\x19",
    b"s1\0SELECT $1\0\0\x01\0\0\0",
    b"s1\0SELECT $1\0\0\x00\0",
    b"s1\0SELECT $1\0\xff\xff",
    b"s1\0SELECT $1\0\0",
    b"s1\0SELECT $1\0",
    b"s1\0SELECT $1",
    b"\0\0\0\0",
    b"s1",
]


@pytest.mark.parametrize("message_type", [b"Q", b"P", b"X"])
@pytest.mark.parametrize("body", _SURFACED_BODIES)
def test_the_relay_accepts_and_refuses_query_and_parse_exactly_as_the_full_parser_does(
    message_type: bytes, body: bytes
) -> None:
    # the relay cuts statement texts out without building messages: same verdict, same text
    raw = _typed(message_type, body)
    try:
        parsed: pg.Message | None = pg.parse_frontend_message(message_type, raw)
    except pg.ProtocolViolation:
        parsed = None
    relay = pg.FrontendRelay()
    if parsed is None:
        with pytest.raises(pg.ProtocolViolation, match="malformed"):
            relay.feed(raw)
        return
    out, surfaced = relay.feed(raw)
    assert out == raw
    ((kind, name, text),) = surfaced
    assert kind == message_type
    if isinstance(parsed, pg.Query):
        assert (name, text.decode("utf-8", "replace")) == (b"", parsed.sql)
    elif isinstance(parsed, pg.Parse):
        assert text.decode("utf-8", "replace") == parsed.query
        assert name == parsed.statement.encode()  # a named statement's name beside its text
    else:
        assert isinstance(parsed, pg.Terminate)
        assert (name, text) == (b"", b"")


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (pg.terminate() + pg.query("SELECT 1"), "after the end"),
        (b"Z" + struct.pack("!i", 4), "unknown frontend message type"),
        (b"p" + struct.pack("!i", 8) + b"abcd", "unknown frontend message type"),
        (b"Q" + struct.pack("!i", 3), "invalid length"),
        (b"d" + struct.pack("!i", 2**31 - 1), "longer than allowed"),
        (_typed(b"Q", b"SELECT 1"), "NUL-terminated"),
    ],
)
def test_the_relay_refuses_malformed_input_and_then_everything(stream: bytes, reason: str) -> None:
    relay = pg.FrontendRelay(max_message_length=1 << 20)
    with pytest.raises(pg.ProtocolViolation, match=reason):
        relay.feed(stream)
    with pytest.raises(pg.ProtocolViolation, match="already failed"):
        relay.feed(pg.query("SELECT 1"))
