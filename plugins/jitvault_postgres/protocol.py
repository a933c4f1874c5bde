"""PostgreSQL frontend/backend protocol v3, sans-IO: bytes in, messages out; builders for bytes out.

Nothing here touches a socket, a clock or a task. :class:`FrontendReader` parses what a client
sends to the proxy, :class:`BackendReader` what a server sends back; each is fed chunks of any
size (a message split anywhere just waits for more bytes) and returns the complete messages. Any
malformed input raises :class:`ProtocolViolation` (and only that), after which the reader refuses
further input: the caller answers with an error and closes the connection.

Every message keeps its wire bytes in ``raw`` (left out of ``repr`` and equality), so a relay
forwards what it received without re-encoding. Message types a relay never inspects (rows, COPY
data) come out as :class:`RawMessage` unless the reader is told otherwise; ``.parse()`` decodes
one on demand. ``repr`` never shows a password, a SASL payload, a bind parameter, a row value
or a cancel key.

Spec: https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

#: PostgreSQL's own limits (MAX_STARTUP_PACKET_LENGTH, PG_MAX_AUTH_TOKEN_LENGTH, PQ_LARGE_...)
DEFAULT_MAX_STARTUP_LENGTH = 10_000
DEFAULT_MAX_AUTH_LENGTH = 65_535
DEFAULT_MAX_MESSAGE_LENGTH = 1 << 30

#: cancel keys are 4 bytes in protocol 3.0 and at most 256 bytes in 3.2
MAX_CANCEL_KEY_LENGTH = 256

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_HEADER = struct.Struct("!ci")


class ProtocolViolation(ValidationError):
    """The peer sent bytes that are not valid protocol v3 here; the connection must end."""

    code = "protocol_violation"


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every parsed message; ``raw`` is the message as it was on the wire."""

    raw: bytes = field(default=b"", repr=False, compare=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class RawMessage(Message):
    """A message passed through unparsed (framing checked, body not); ``parse()`` decodes it."""

    message_type: bytes
    parser: Callable[[bytes, bytes], Message] = field(repr=False, compare=False, kw_only=True)

    def parse(self) -> Message:
        return self.parser(self.message_type, self.raw)

    def __repr__(self) -> str:
        return f"RawMessage(message_type={self.message_type!r}, length={len(self.raw)})"


# frontend, untyped start phase


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """Protocol ``3.minor`` startup; ``params`` has at least ``user``; ``_pq_.*`` are options."""

    minor: int
    params: Mapping[str, str]

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    pid: int
    secret_key: bytes = field(repr=False)


# frontend, authentication ('p', read according to FrontendReader.expect_auth)


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    type_code: ClassVar[bytes] = b"p"
    password: Sensitive[str]


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    type_code: ClassVar[bytes] = b"p"
    mechanism: str
    #: None when the client sent length -1 (no initial response)
    data: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    type_code: ClassVar[bytes] = b"p"
    data: bytes = field(repr=False)


# frontend, typed


@dataclass(frozen=True, slots=True)
class Query(Message):
    type_code: ClassVar[bytes] = b"Q"
    sql: str


@dataclass(frozen=True, slots=True)
class Parse(Message):
    type_code: ClassVar[bytes] = b"P"
    statement: str
    query: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind(Message):
    """Parameter values stay out of ``repr``: they may be secrets (``ALTER ROLE ... $1``)."""

    type_code: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...] = field(repr=False)
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Execute(Message):
    type_code: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Describe(Message):
    type_code: ClassVar[bytes] = b"D"
    #: "S" (prepared statement) or "P" (portal)
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Close(Message):
    type_code: ClassVar[bytes] = b"C"
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync(Message):
    type_code: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    type_code: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...] = field(repr=False)
    result_format: int


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    """Both directions."""

    type_code: ClassVar[bytes] = b"d"
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    """Both directions."""

    type_code: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    type_code: ClassVar[bytes] = b"f"
    message: str


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    type_code: ClassVar[bytes] = b"X"


# backend


@dataclass(frozen=True, slots=True)
class SSLAnswer(Message):
    """The server's one-byte answer to SSLRequest / GSSENCRequest ("S"/"G" yes, "N" no)."""

    accepted: bool


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Message):
    type_code: ClassVar[bytes] = b"R"


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Message):
    type_code: ClassVar[bytes] = b"R"


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Message):
    type_code: ClassVar[bytes] = b"R"
    salt: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Message):
    type_code: ClassVar[bytes] = b"R"
    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Message):
    type_code: ClassVar[bytes] = b"R"
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Message):
    type_code: ClassVar[bytes] = b"R"
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthenticationOther(Message):
    """A method the proxy does not speak: 2 Kerberos, 6 SCM, 7 GSS, 8 GSSContinue, 9 SSPI."""

    type_code: ClassVar[bytes] = b"R"
    method: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    type_code: ClassVar[bytes] = b"K"
    pid: int
    secret_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    type_code: ClassVar[bytes] = b"Z"
    #: "I" idle, "T" in a transaction, "E" in a failed transaction
    status: str


@dataclass(frozen=True, slots=True)
class _Report(Message):
    """ErrorResponse / NoticeResponse: ``fields`` maps a one-letter code to its text."""

    fields: Mapping[str, str]

    @property
    def severity(self) -> str:
        """The non-localized severity ("V") when sent, else the localized one ("S")."""
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Report):
    type_code: ClassVar[bytes] = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Report):
    type_code: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    type_code: ClassVar[bytes] = b"C"
    tag: str


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    type_code: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    type_code: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    type_code: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    type_code: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    type_code: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    type_code: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    type_code: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    type_code: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    type_code: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyInResponse(Message):
    type_code: ClassVar[bytes] = b"G"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyOutResponse(Message):
    type_code: ClassVar[bytes] = b"H"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyBothResponse(Message):
    type_code: ClassVar[bytes] = b"W"
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    type_code: ClassVar[bytes] = b"A"
    pid: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    type_code: ClassVar[bytes] = b"V"
    value: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    type_code: ClassVar[bytes] = b"v"
    newest_minor: int
    unsupported_options: tuple[str, ...]


# -- body parsing --------------------------------------------------------------------------


class _Body:
    """A cursor over one message body; every read checks bounds and raises ProtocolViolation."""

    __slots__ = ("_data", "_end", "_pos", "_what")

    def __init__(self, data: bytes, start: int, what: str) -> None:
        self._data = data
        self._pos = start
        self._end = len(data)
        self._what = what

    def fail(self, reason: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self._what}: {reason}")

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise self.fail("truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def int16(self) -> int:
        value: int = _INT16.unpack(self.take(2))[0]
        return value

    def int32(self) -> int:
        value: int = _INT32.unpack(self.take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = _UINT32.unpack(self.take(4))[0]
        return value

    def byte(self) -> bytes:
        return self.take(1)

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise self.fail("negative count")
        return n

    def cstring_bytes(self) -> bytes:
        nul = self._data.find(b"\x00", self._pos, self._end)
        if nul < 0:
            raise self.fail("string is not NUL-terminated")
        value = self._data[self._pos : nul]
        self._pos = nul + 1
        return value

    def cstring(self) -> str:
        """Text for display and recording; undecodable bytes become U+FFFD."""
        return self.cstring_bytes().decode("utf-8", "replace")

    def strict_cstring(self) -> str:
        """Text the proxy acts on (names, mechanisms): must be valid UTF-8."""
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def value(self) -> bytes | None:
        """An int32-length-prefixed value; -1 is NULL."""
        n = self.int32()
        if n == -1:
            return None
        if n < -1:
            raise self.fail("negative value length")
        return self.take(n)

    def rest(self) -> bytes:
        chunk = self._data[self._pos : self._end]
        self._pos = self._end
        return chunk

    def remaining(self) -> int:
        return self._end - self._pos

    def done(self) -> None:
        if self._pos != self._end:
            raise self.fail("trailing bytes")


def _typed_body(raw: bytes, what: str) -> _Body:
    return _Body(raw, 5, what)


# frontend typed bodies


def _parse_query(raw: bytes) -> Message:
    b = _typed_body(raw, "Query")
    sql = b.cstring()
    b.done()
    return Query(sql, raw=raw)


def _parse_parse(raw: bytes) -> Message:
    b = _typed_body(raw, "Parse")
    statement = b.cstring()
    query = b.cstring()
    types = tuple(b.uint32() for _ in range(b.count()))
    b.done()
    return Parse(statement, query, types, raw=raw)


def _values(b: _Body) -> tuple[bytes | None, ...]:
    return tuple(b.value() for _ in range(b.count()))


def _formats(b: _Body) -> tuple[int, ...]:
    formats = tuple(b.int16() for _ in range(b.count()))
    if any(f not in (0, 1) for f in formats):
        raise b.fail("format code is neither 0 (text) nor 1 (binary)")
    return formats


def _parse_bind(raw: bytes) -> Message:
    b = _typed_body(raw, "Bind")
    portal = b.cstring()
    statement = b.cstring()
    param_formats = _formats(b)
    params = _values(b)
    result_formats = _formats(b)
    b.done()
    return Bind(portal, statement, param_formats, params, result_formats, raw=raw)


def _parse_execute(raw: bytes) -> Message:
    b = _typed_body(raw, "Execute")
    portal = b.cstring()
    max_rows = b.int32()
    b.done()
    return Execute(portal, max_rows, raw=raw)


def _parse_target(raw: bytes, what: str) -> tuple[str, str]:
    b = _typed_body(raw, what)
    kind = b.byte()
    if kind not in (b"S", b"P"):
        raise b.fail("target is neither 'S' nor 'P'")
    name = b.cstring()
    b.done()
    return kind.decode(), name


def _parse_describe(raw: bytes) -> Message:
    return Describe(*_parse_target(raw, "Describe"), raw=raw)


def _parse_close(raw: bytes) -> Message:
    return Close(*_parse_target(raw, "Close"), raw=raw)


def _empty(cls: type[Message], what: str) -> Callable[[bytes], Message]:
    def parse(raw: bytes) -> Message:
        _typed_body(raw, what).done()
        return cls(raw=raw)

    return parse


def _parse_function_call(raw: bytes) -> Message:
    b = _typed_body(raw, "FunctionCall")
    oid = b.uint32()
    arg_formats = _formats(b)
    args = _values(b)
    result_format = b.int16()
    b.done()
    return FunctionCall(oid, arg_formats, args, result_format, raw=raw)


def _parse_copy_data(raw: bytes) -> Message:
    return CopyData(raw[5:], raw=raw)


def _parse_copy_fail(raw: bytes) -> Message:
    b = _typed_body(raw, "CopyFail")
    message = b.cstring()
    b.done()
    return CopyFail(message, raw=raw)


_FRONTEND_PARSERS: dict[bytes, Callable[[bytes], Message]] = {
    b"Q": _parse_query,
    b"P": _parse_parse,
    b"B": _parse_bind,
    b"E": _parse_execute,
    b"D": _parse_describe,
    b"C": _parse_close,
    b"S": _empty(Sync, "Sync"),
    b"H": _empty(Flush, "Flush"),
    b"F": _parse_function_call,
    b"d": _parse_copy_data,
    b"c": _empty(CopyDone, "CopyDone"),
    b"f": _parse_copy_fail,
    b"X": _empty(Terminate, "Terminate"),
}


def parse_frontend_message(message_type: bytes, raw: bytes) -> Message:
    """Decode one complete typed frontend message (not 'p': that needs the auth phase)."""
    parser = _FRONTEND_PARSERS.get(message_type)
    if parser is None:
        raise ProtocolViolation(f"unknown frontend message type {message_type!r}")
    return parser(raw)


# authentication bodies ('p')


class AuthPhase(enum.Enum):
    """What a 'p' message from the client means: the caller says so before it can arrive."""

    NONE = "none"  # no 'p' expected: one arriving is a violation
    PASSWORD = "password"  # after AuthenticationCleartextPassword / MD5Password
    SASL_INITIAL = "sasl_initial"  # after AuthenticationSASL
    SASL_RESPONSE = "sasl_response"  # after AuthenticationSASLContinue


def _parse_password(raw: bytes) -> Message:
    b = _typed_body(raw, "PasswordMessage")
    password = b.strict_cstring()
    b.done()
    return PasswordMessage(Sensitive(password), raw=raw)


def _parse_sasl_initial(raw: bytes) -> Message:
    b = _typed_body(raw, "SASLInitialResponse")
    mechanism = b.strict_cstring()
    data = b.value()
    b.done()
    return SASLInitialResponse(mechanism, data, raw=raw)


def _parse_sasl_response(raw: bytes) -> Message:
    return SASLResponse(raw[5:], raw=raw)


_AUTH_PARSERS: dict[AuthPhase, Callable[[bytes], Message]] = {
    AuthPhase.PASSWORD: _parse_password,
    AuthPhase.SASL_INITIAL: _parse_sasl_initial,
    AuthPhase.SASL_RESPONSE: _parse_sasl_response,
}


# backend bodies


def _parse_authentication(raw: bytes) -> Message:
    b = _typed_body(raw, "Authentication")
    method = b.int32()
    msg: Message
    if method == 0:
        msg = AuthenticationOk(raw=raw)
    elif method == 3:
        msg = AuthenticationCleartextPassword(raw=raw)
    elif method == 5:
        msg = AuthenticationMD5Password(b.take(4), raw=raw)
    elif method == 10:
        mechanisms: list[str] = []
        while (name := b.strict_cstring()) != "":
            mechanisms.append(name)
        if not mechanisms:
            raise b.fail("no SASL mechanism offered")
        msg = AuthenticationSASL(tuple(mechanisms), raw=raw)
    elif method == 11:
        msg = AuthenticationSASLContinue(b.rest(), raw=raw)
    elif method == 12:
        msg = AuthenticationSASLFinal(b.rest(), raw=raw)
    elif method in (2, 6, 7, 8, 9):
        msg = AuthenticationOther(method, b.rest(), raw=raw)
    else:
        raise b.fail(f"unknown authentication method {method}")
    b.done()
    return msg


def _parse_parameter_status(raw: bytes) -> Message:
    b = _typed_body(raw, "ParameterStatus")
    name = b.cstring()
    value = b.cstring()
    b.done()
    return ParameterStatus(name, value, raw=raw)


def _parse_backend_key_data(raw: bytes) -> Message:
    b = _typed_body(raw, "BackendKeyData")
    pid = b.int32()
    key = b.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
        raise b.fail("cancel key length out of range")
    return BackendKeyData(pid, key, raw=raw)


def _parse_ready_for_query(raw: bytes) -> Message:
    b = _typed_body(raw, "ReadyForQuery")
    status = b.byte()
    b.done()
    if status not in (b"I", b"T", b"E"):
        raise b.fail("transaction status is not I, T or E")
    return ReadyForQuery(status.decode(), raw=raw)


def _report_fields(b: _Body) -> dict[str, str]:
    fields: dict[str, str] = {}
    while (code := b.byte()) != b"\x00":
        fields[code.decode("latin-1")] = b.cstring()
    b.done()
    return fields


def _parse_error(raw: bytes) -> Message:
    return ErrorResponse(_report_fields(_typed_body(raw, "ErrorResponse")), raw=raw)


def _parse_notice(raw: bytes) -> Message:
    return NoticeResponse(_report_fields(_typed_body(raw, "NoticeResponse")), raw=raw)


def _parse_command_complete(raw: bytes) -> Message:
    b = _typed_body(raw, "CommandComplete")
    tag = b.cstring()
    b.done()
    return CommandComplete(tag, raw=raw)


def _parse_row_description(raw: bytes) -> Message:
    b = _typed_body(raw, "RowDescription")
    fields = tuple(
        FieldDescription(
            name=b.cstring(),
            table_oid=b.uint32(),
            column=b.int16(),
            type_oid=b.uint32(),
            type_size=b.int16(),
            type_modifier=b.int32(),
            format=b.int16(),
        )
        for _ in range(b.count())
    )
    b.done()
    return RowDescription(fields, raw=raw)


def _parse_data_row(raw: bytes) -> Message:
    b = _typed_body(raw, "DataRow")
    values = _values(b)
    b.done()
    return DataRow(values, raw=raw)


def _parse_parameter_description(raw: bytes) -> Message:
    b = _typed_body(raw, "ParameterDescription")
    oids = tuple(b.uint32() for _ in range(b.count()))
    b.done()
    return ParameterDescription(oids, raw=raw)


def _copy_response(
    cls: type[CopyInResponse | CopyOutResponse | CopyBothResponse],
) -> Callable[[bytes], Message]:
    def parse(raw: bytes) -> Message:
        b = _typed_body(raw, cls.__name__)
        overall = b.byte()[0]
        if overall not in (0, 1):
            raise b.fail("format is neither 0 (text) nor 1 (binary)")
        columns = _formats(b)
        b.done()
        return cls(overall, columns, raw=raw)

    return parse


def _parse_notification(raw: bytes) -> Message:
    b = _typed_body(raw, "NotificationResponse")
    pid = b.int32()
    channel = b.cstring()
    payload = b.cstring()
    b.done()
    return NotificationResponse(pid, channel, payload, raw=raw)


def _parse_function_call_response(raw: bytes) -> Message:
    b = _typed_body(raw, "FunctionCallResponse")
    value = b.value()
    b.done()
    return FunctionCallResponse(value, raw=raw)


def _parse_negotiate(raw: bytes) -> Message:
    b = _typed_body(raw, "NegotiateProtocolVersion")
    newest = b.int32()
    n = b.int32()
    if n < 0 or n > b.remaining():  # each option takes at least its NUL
        raise b.fail("option count out of range")
    options = tuple(b.cstring() for _ in range(n))
    b.done()
    return NegotiateProtocolVersion(newest, options, raw=raw)


_BACKEND_PARSERS: dict[bytes, Callable[[bytes], Message]] = {
    b"R": _parse_authentication,
    b"S": _parse_parameter_status,
    b"K": _parse_backend_key_data,
    b"Z": _parse_ready_for_query,
    b"E": _parse_error,
    b"N": _parse_notice,
    b"C": _parse_command_complete,
    b"T": _parse_row_description,
    b"D": _parse_data_row,
    b"I": _empty(EmptyQueryResponse, "EmptyQueryResponse"),
    b"1": _empty(ParseComplete, "ParseComplete"),
    b"2": _empty(BindComplete, "BindComplete"),
    b"3": _empty(CloseComplete, "CloseComplete"),
    b"n": _empty(NoData, "NoData"),
    b"s": _empty(PortalSuspended, "PortalSuspended"),
    b"t": _parse_parameter_description,
    b"G": _copy_response(CopyInResponse),
    b"H": _copy_response(CopyOutResponse),
    b"W": _copy_response(CopyBothResponse),
    b"d": _parse_copy_data,
    b"c": _empty(CopyDone, "CopyDone"),
    b"A": _parse_notification,
    b"V": _parse_function_call_response,
    b"v": _parse_negotiate,
}


def parse_backend_message(message_type: bytes, raw: bytes) -> Message:
    """Decode one complete typed backend message (``raw`` includes type byte and length)."""
    parser = _BACKEND_PARSERS.get(message_type)
    if parser is None:
        raise ProtocolViolation(f"unknown backend message type {message_type!r}")
    return parser(raw)


# -- streaming readers -----------------------------------------------------------------------

# A state handler looks at the unconsumed input from ``offset`` and returns the next message
# with the offset after it, or None when it needs more bytes.
_Step = tuple[Message, int] | None
_State = Callable[[memoryview, int], _Step]


class _Reader:
    """Buffering, framing and failure handling shared by both directions."""

    def __init__(self, max_message_length: int) -> None:
        self.max_message_length = max_message_length
        self._buffer = bytearray()
        self._state: _State = self._typed
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Parse ``data`` appended to what is buffered; return every complete message."""
        if self._failed is not None:
            raise ProtocolViolation(f"connection already failed: {self._failed}")
        source: bytes | bytearray
        if self._buffer:
            self._buffer += data
            source = self._buffer
        else:
            source = data
        messages: list[Message] = []
        offset = 0
        try:
            with memoryview(source) as view:
                # every step consumes at least one byte, so this ends within len(source) turns
                while offset < len(view):
                    step = self._state(view, offset)
                    if step is None:
                        break
                    message, offset = step
                    messages.append(message)
        except ProtocolViolation as exc:
            self._failed = exc.message
            self._buffer = bytearray()
            raise
        if source is self._buffer:
            del self._buffer[:offset]
        else:
            self._buffer = bytearray(data[offset:])
        return messages

    @staticmethod
    def _slice(view: memoryview, start: int, end: int) -> bytes:
        obj = view.obj
        if isinstance(obj, bytes) and start == 0 and end == len(obj):
            return obj  # the whole chunk is one message: no copy
        return view[start:end].tobytes()

    def _frame(self, view: memoryview, offset: int) -> tuple[bytes, bytes, int] | None:
        """(type, raw, end) of the typed message at ``offset``; None if incomplete."""
        if len(view) - offset < 5:
            return None
        message_type, length = _HEADER.unpack_from(view, offset)
        self._check_length(message_type, length)
        end = offset + 1 + length
        if end > len(view):
            return None
        return message_type, self._slice(view, offset, end), end

    def _check_length(self, message_type: bytes, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(f"invalid length {length} of message {message_type!r}")
        if length > self.max_message_length:
            raise ProtocolViolation(f"message {message_type!r} longer than allowed")

    def _typed(self, view: memoryview, offset: int) -> _Step:
        raise NotImplementedError

    def _closed(self, view: memoryview, offset: int) -> _Step:
        raise ProtocolViolation("data after the end of the conversation")


class FrontendReader(_Reader):
    """Client -> proxy. Starts in the untyped startup phase.

    After :class:`SSLRequest` / :class:`GSSENCRequest` the reader accepts nothing until the
    caller has answered and calls :meth:`resume_startup` (bytes sent before the answer would be
    plaintext injected ahead of TLS: CVE-2021-23214). After :class:`StartupMessage` the client may
    only send 'p' messages, each read as the caller's :meth:`expect_auth` says; once the caller
    calls :meth:`authenticated`, every typed frontend message is accepted. Nothing may follow
    :class:`Terminate` or :class:`CancelRequest`.
    """

    def __init__(
        self,
        *,
        max_startup_length: int = DEFAULT_MAX_STARTUP_LENGTH,
        max_auth_length: int = DEFAULT_MAX_AUTH_LENGTH,
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        passthrough: Iterable[bytes] = (b"d",),
    ) -> None:
        super().__init__(max_message_length)
        self.max_startup_length = max_startup_length
        self.max_auth_length = max_auth_length
        self.passthrough = frozenset(passthrough)
        self.auth_phase = AuthPhase.NONE
        self._encryption_requested: set[int] = set()
        self._state = self._startup

    # the caller's side of the conversation

    def resume_startup(self) -> None:
        """The SSL/GSS answer has been sent (and TLS set up if accepted): read the startup."""
        if self._state != self._awaiting_encryption_answer:
            raise ProtocolViolation("no SSLRequest or GSSENCRequest is waiting for an answer")
        self._state = self._startup

    def expect_auth(self, phase: AuthPhase) -> None:
        """Say what the next 'p' message is (call it before sending the auth request)."""
        if self._state != self._authenticating:
            raise ProtocolViolation("not in the authentication phase")
        self.auth_phase = phase

    def authenticated(self) -> None:
        """Authentication is over (call it before sending AuthenticationOk)."""
        if self._state != self._authenticating:
            raise ProtocolViolation("not in the authentication phase")
        self.auth_phase = AuthPhase.NONE
        self._state = self._typed

    def take_buffered(self) -> bytes:
        """Hand over the bytes received and not yet parsed (to a relay taking over the stream)."""
        data = bytes(self._buffer)
        self._buffer = bytearray()
        return data

    # states

    def _startup(self, view: memoryview, offset: int) -> _Step:
        if len(view) - offset < 4:
            return None
        length: int = _INT32.unpack_from(view, offset)[0]
        if length < 8:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if length > self.max_startup_length:
            raise ProtocolViolation("startup packet longer than allowed")
        end = offset + length
        if end > len(view):
            return None
        raw = self._slice(view, offset, end)
        body = _Body(raw, 8, "startup packet")
        code: int = _INT32.unpack_from(raw, 4)[0]
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            body.done()
            if code in self._encryption_requested:
                raise ProtocolViolation("encryption requested twice")
            self._encryption_requested.add(code)
            # anything already behind it is refused by that state (CVE-2021-23214)
            self._state = self._awaiting_encryption_answer
            cls = SSLRequest if code == SSL_REQUEST_CODE else GSSENCRequest
            return cls(raw=raw), end
        if code == CANCEL_REQUEST_CODE:
            pid = body.int32()
            key = body.rest()
            if not 4 <= len(key) <= MAX_CANCEL_KEY_LENGTH:
                raise body.fail("cancel key length out of range")
            self._state = self._closed
            return CancelRequest(pid, key, raw=raw), end
        if code >> 16 != 3:
            raise ProtocolViolation(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
        params = self._startup_params(body)
        self._state = self._authenticating
        return StartupMessage(code & 0xFFFF, params, raw=raw), end

    @staticmethod
    def _startup_params(body: _Body) -> dict[str, str]:
        params: dict[str, str] = {}
        while (name := body.strict_cstring()) != "":
            if name in params:
                raise body.fail(f"parameter {name[:64]!r} given twice")
            params[name] = body.strict_cstring()
        body.done()
        if not params.get("user"):
            raise body.fail("no user name")
        return params

    def _awaiting_encryption_answer(self, view: memoryview, offset: int) -> _Step:
        raise ProtocolViolation("data sent after an encryption request, before the answer")

    def _authenticating(self, view: memoryview, offset: int) -> _Step:
        if len(view) - offset < 5:
            return None
        message_type, length = _HEADER.unpack_from(view, offset)
        if message_type != b"p":
            raise ProtocolViolation(f"message {message_type!r} sent during authentication")
        if self.auth_phase is AuthPhase.NONE:
            raise ProtocolViolation("authentication message sent before it was asked for")
        self._check_length(message_type, length)
        if length > self.max_auth_length:
            raise ProtocolViolation("authentication message longer than allowed")
        frame = self._frame(view, offset)
        if frame is None:
            return None
        _, raw, end = frame
        message = _AUTH_PARSERS[self.auth_phase](raw)
        self.auth_phase = AuthPhase.NONE  # one answer per request
        return message, end

    def _typed(self, view: memoryview, offset: int) -> _Step:
        message_type = bytes(view[offset : offset + 1])
        if message_type not in _FRONTEND_PARSERS:  # refuse at the first byte, not after the length
            raise ProtocolViolation(f"unknown frontend message type {message_type!r}")
        frame = self._frame(view, offset)
        if frame is None:
            return None
        message_type, raw, end = frame
        if message_type in self.passthrough:
            message: Message = RawMessage(message_type, raw=raw, parser=parse_frontend_message)
        else:
            message = parse_frontend_message(message_type, raw)
        if message_type == b"X":
            self._state = self._closed
        return message, end


class BackendReader(_Reader):
    """Server -> proxy: typed messages; :meth:`expect_encryption_answer` for the one-byte answer.

    Types in ``passthrough`` (by default DataRow and CopyData, the bulk of a session) come out as
    :class:`RawMessage` with framing checked and the body left to the receiver.
    """

    def __init__(
        self,
        *,
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        passthrough: Iterable[bytes] = (b"D", b"d"),
    ) -> None:
        super().__init__(max_message_length)
        self.passthrough = frozenset(passthrough)

    def expect_encryption_answer(self) -> None:
        """Call after sending SSLRequest / GSSENCRequest: the next byte is "S"/"G" or "N"."""
        if self._buffer:
            raise ProtocolViolation("server sent data before the encryption request")
        self._state = self._encryption_answer

    def _encryption_answer(self, view: memoryview, offset: int) -> _Step:
        answer = bytes(view[offset : offset + 1])
        if answer == b"E":  # a server too old to know the request answers with an error
            self._state = self._typed
            return self._typed(view, offset)
        if answer not in (b"S", b"G", b"N"):
            raise ProtocolViolation(f"invalid answer {answer!r} to an encryption request")
        if offset + 1 != len(view):
            # CVE-2021-23222: bytes after the answer were not protected by the TLS to come
            raise ProtocolViolation("server sent data after its answer to an encryption request")
        self._state = self._typed
        return SSLAnswer(answer != b"N", raw=answer), offset + 1

    def _typed(self, view: memoryview, offset: int) -> _Step:
        message_type = bytes(view[offset : offset + 1])
        if message_type not in _BACKEND_PARSERS:  # refuse at the first byte, not after the length
            raise ProtocolViolation(f"unknown backend message type {message_type!r}")
        frame = self._frame(view, offset)
        if frame is None:
            return None
        message_type, raw, end = frame
        if message_type in self.passthrough:
            return RawMessage(message_type, raw=raw, parser=parse_backend_message), end
        return parse_backend_message(message_type, raw), end


#: what a relay must look at in the client's stream, as (message type, statement name, raw
#: text): ``(b"Q", b"", text)`` for a simple Query and ``(b"P", name, text)`` for a Parse (its
#: name empty for the unnamed statement); ``(b"B", name, b"")`` for a Bind that runs a
#: statement parsed before: every Bind of a named one, and every Bind of the unnamed one but
#: the first after its Parse in the Parse's own cycle (that run is the Parse's record; a
#: Parse whose cycle ended unbound, after a Describe, was a preparation);
#: ``(b"X", b"", b"")`` for Terminate, and ``(b"S", b"", b"")`` / ``(b"F", b"", b"")`` for a
#: Sync or a FunctionCall (each ends a cycle the server answers with one ReadyForQuery:
#: :class:`StatementCycles`)
Surfaced = tuple[bytes, bytes, bytes]
_CYCLE_ENDS = frozenset((b"S", b"F"))
_STATEMENTS = frozenset((b"Q", b"P", b"B"))

#: a Bind's portal and statement names must end within this many bytes of its body
BIND_HEAD_MAX = 1024

#: cycles in flight a relay keeps apart (past this, a new one joins the newest: _cycles.h)
CYCLES_MAX = 32


class StatementCycles:
    """How long each recorded statement ran: the client's cycles, each answered by one
    ReadyForQuery. A Query is a cycle of its own; the Parse messages (and the Binds recorded as
    runs again) before a Sync are one cycle; a FunctionCall, or a Sync with neither, is a cycle
    with no statement. The server answers the
    cycles in order, so the oldest one still waiting ends at each ReadyForQuery, and its
    statements ran from the first of them being sent to that answer.

    Bounded: past :data:`CYCLES_MAX` cycles in flight, a new cycle joins the newest one (whose
    duration then covers both). The native relay's twin is ``_cycles.h``."""

    __slots__ = ("_open", "_open_start", "_ring")

    def __init__(self) -> None:
        #: [statements, readies that end it, start (us)] per cycle sent and not answered
        self._ring: deque[list[int]] = deque()
        self._open = 0
        self._open_start = 0

    def sent(self, surfaced: list[Surfaced], now_us: int) -> None:
        """The client's messages just relayed (what :meth:`FrontendRelay.feed` surfaced)."""
        for message_type, _, _ in surfaced:
            if message_type in _CYCLE_ENDS:
                self._end()
                continue
            if message_type not in _STATEMENTS:
                continue  # Terminate
            if not self._open:
                self._open_start = now_us
            self._open += 1
            if message_type == b"Q":
                self._end()

    def _end(self) -> None:
        ring = self._ring
        if len(ring) == CYCLES_MAX:
            tail = ring[-1]
            if not tail[0]:
                tail[2] = self._open_start
            tail[0] += self._open
            tail[1] += 1
        else:
            ring.append([self._open, 1, self._open_start])
        self._open = 0

    def ready(self, readies: int, now_us: int) -> list[tuple[int, int]]:
        """``readies`` ReadyForQuery messages came: the ``(statements, microseconds)`` of each
        cycle they end that had statements."""
        done: list[tuple[int, int]] = []
        ring = self._ring
        for _ in range(readies):
            if not ring:
                break  # not an answer to a cycle of this relay's
            head = ring[0]
            head[1] -= 1
            if head[1]:
                continue
            ring.popleft()
            if head[0]:
                done.append((head[0], max(0, now_us - head[2])))
        return done


class FrontendRelay:
    """Client -> server after authentication, for a relay: bytes through, a few messages out.

    :meth:`feed` returns the bytes to forward now (a prefix of what was fed so far, byte for
    byte: the chunk itself when it ends at a safe point) and what a relay must look at, as
    :data:`Surfaced` triples: the statement text of each Query and Parse, as raw bytes cut out
    of the message exactly where the server reads it (decoding is left to whoever records it,
    off the relay's path), with a Parse's statement name; a Bind's statement name; Terminate. Only
    Query, Parse and Terminate are held until complete, and their structure is checked as the
    server checks it; a Bind is held only until its names are in (they must end within its
    first :data:`BIND_HEAD_MAX` bytes); every other message, and the rest of a Bind (its
    parameter values), streams through as it comes, with only its type and length checked, so
    a huge COPY takes no more memory than the chunk in hand. No message object is
    made on this path. Nothing may follow Terminate. Malformed input raises
    :class:`ProtocolViolation`, after which every feed does.
    """

    INSPECTED: ClassVar[frozenset[bytes]] = frozenset((b"Q", b"P", b"X"))

    __slots__ = (
        "_failed",
        "_held",
        "_need",
        "_terminated",
        "_through",
        "_unnamed_parsed",
        "max_message_length",
    )

    def __init__(self, max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        self.max_message_length = max_message_length
        self._held = bytearray()  # a partial header, or an inspected message being completed
        self._need = 0  # the held inspected message's full size, once its header is known
        self._through = 0  # bytes of a streamed message still to come
        self._terminated = False
        # the unnamed statement was parsed in this cycle and not yet bound: its first Bind is
        # the run its Parse records, and every later one (or one after the cycle) a run again
        self._unnamed_parsed = False
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned for forwarding."""
        return len(self._held)

    def feed(self, data: bytes) -> tuple[bytes, list[Surfaced]]:
        if self._failed is not None:
            raise ProtocolViolation(f"connection already failed: {self._failed}")
        if self._need and len(self._held) + len(data) < self._need:
            self._held += data  # a long query text still arriving: no rescan
            return b"", []
        source: bytes | bytearray = data
        if self._held:
            self._held += data
            source = self._held
        try:
            pos, surfaced = self._scan(source)
        except ProtocolViolation as exc:
            self._failed = exc.message
            self._held = bytearray()
            raise
        if source is data:
            if pos == len(data):
                return data, surfaced
            self._held = bytearray(data[pos:])
            return data[:pos], surfaced
        out = bytes(self._held[:pos])
        del self._held[:pos]
        return out, surfaced

    def _scan(self, view: bytes | bytearray) -> tuple[int, list[Surfaced]]:
        surfaced: list[Surfaced] = []
        size, pos = len(view), 0
        self._need = 0
        if self._through:
            pos = min(self._through, size)
            self._through -= pos
        unpack, parsers, inspected = _HEADER.unpack_from, _FRONTEND_PARSERS, self.INSPECTED
        while pos < size:
            if self._terminated:
                raise relay_violation(AFTER_END)
            if size - pos < 5:
                break
            message_type, length = unpack(view, pos)
            if message_type not in parsers:
                raise relay_violation(UNKNOWN_TYPE, message_type)
            if length < 4:
                raise relay_violation(BAD_LENGTH, message_type, length)
            if length > self.max_message_length:
                raise relay_violation(TOO_LONG, message_type)
            end = pos + 1 + length
            if message_type in inspected:
                if end > size:
                    self._need = end - pos
                    break
                _surface(message_type, view, pos + 5, end, surfaced)
                self._terminated = message_type == b"X"
                if message_type == b"P" and not surfaced[-1][1]:  # the unnamed statement's
                    self._unnamed_parsed = True
            else:
                if message_type == b"B":  # a statement run again: recorded by its name
                    head = min(length - 4, BIND_HEAD_MAX)
                    name = _bind_name(view, pos + 5, min(size, pos + 5 + head), head, length)
                    if name is None:  # held, and looked at again with the next feed
                        break
                    if name or not self._unnamed_parsed:
                        surfaced.append((b"B", name, b""))
                    else:
                        self._unnamed_parsed = False
                if message_type in _CYCLE_ENDS:
                    surfaced.append((message_type, b"", b""))
                    # an unnamed Parse not bound in its cycle (a Describe first) was a
                    # preparation: its first Bind in a later cycle is a run again
                    self._unnamed_parsed = False
                if end > size:
                    self._through = end - size
                    end = size
            pos = end
        return pos, surfaced


# The relay's violations, by code: the native relay (_framing.h, enum of the same numbers)
# reports a code, and both relays word it here.
AFTER_END, UNKNOWN_TYPE, BAD_LENGTH, TOO_LONG, TERMINATE_TRAILING = 1, 2, 3, 4, 5
NOT_NUL_TERMINATED, TRAILING, TRUNCATED, NEGATIVE_COUNT, NAMES_TOO_LONG = 6, 7, 8, 9, 10


def relay_violation(code: int, message_type: bytes = b"", length: int = 0) -> ProtocolViolation:
    """The violation ``code`` of a client message of ``message_type`` (and ``length``), worded
    for the client's ``08P01`` error and the log."""
    what = {b"Q": "Query", b"B": "Bind"}.get(message_type, "Parse")
    if code == AFTER_END:
        reason = "data after the end of the conversation"
    elif code == UNKNOWN_TYPE:
        reason = f"unknown frontend message type {message_type!r}"
    elif code == BAD_LENGTH:
        reason = f"invalid length {length} of message {message_type!r}"
    elif code == TOO_LONG:
        reason = f"message {message_type!r} longer than allowed"
    elif code == TERMINATE_TRAILING:
        reason = "malformed Terminate: trailing bytes"
    elif code == NOT_NUL_TERMINATED:
        reason = f"malformed {what}: string is not NUL-terminated"
    elif code == TRAILING:
        reason = f"malformed {what}: trailing bytes"
    elif code == TRUNCATED:
        reason = f"malformed {what}: truncated"
    elif code == NEGATIVE_COUNT:
        reason = f"malformed {what}: negative count"
    elif code == NAMES_TOO_LONG:
        reason = f"Bind's portal and statement names longer than {BIND_HEAD_MAX} bytes"
    else:
        reason = "malformed message"
    return ProtocolViolation(reason)


def _bind_name(
    view: bytes | bytearray, body: int, end: int, head: int, length: int
) -> bytes | None:
    """The statement name of a Bind whose body starts at ``view[body]``, of which
    ``view[body:end]`` is in hand (at most ``head`` bytes: where its names must end); None when
    more must come first."""
    portal_end = view.find(b"\x00", body, end)
    name_end = -1 if portal_end < 0 else view.find(b"\x00", portal_end + 1, end)
    if name_end < 0:
        if end - body < head:
            return None
        code = NOT_NUL_TERMINATED if head == length - 4 else NAMES_TOO_LONG
        raise relay_violation(code, b"B")
    return bytes(view[portal_end + 1 : name_end])


def _surface(
    message_type: bytes, view: bytes | bytearray, body: int, end: int, out: list[Surfaced]
) -> None:
    """Add to ``out`` a complete Query or Parse whose body is ``view[body:end]`` (checked as
    :func:`parse_frontend_message` checks it) with its text (and a Parse's statement name), or
    Terminate."""
    if message_type == b"X":
        if body != end:
            raise relay_violation(TERMINATE_TRAILING, message_type)
        out.append((b"X", b"", b""))
        return
    name = body
    if message_type == b"P":  # the statement's name comes first
        body = view.find(b"\x00", body, end) + 1
        if body == 0:
            raise relay_violation(NOT_NUL_TERMINATED, message_type)
    nul = view.find(b"\x00", body, end)
    if nul < 0:
        raise relay_violation(NOT_NUL_TERMINATED, message_type)
    if message_type == b"Q":
        if nul != end - 1:
            raise relay_violation(TRAILING, message_type)
    else:  # the parameter types: an int16 count, then that many int32
        if end - nul - 1 < 2:
            raise relay_violation(TRUNCATED, message_type)
        count: int = _INT16.unpack_from(view, nul + 1)[0]
        if count < 0:
            raise relay_violation(NEGATIVE_COUNT, message_type)
        if end - nul - 3 != 4 * count:
            short = end - nul - 3 < 4 * count
            raise relay_violation(TRUNCATED if short else TRAILING, message_type)
        out.append((message_type, bytes(view[name : body - 1]), bytes(view[body:nul])))
        return
    out.append((message_type, b"", bytes(view[body:nul])))


# -- builders ----------------------------------------------------------------------------------


def _cstr(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if b"\x00" in data:
        raise ProtocolViolation("a protocol string cannot contain a NUL byte")
    return data + b"\x00"


def _build(message_type: bytes, body: bytes = b"") -> bytes:
    return message_type + _INT32.pack(len(body) + 4) + body


def _build_untyped(body: bytes) -> bytes:
    return _INT32.pack(len(body) + 4) + body


# frontend


def startup_message(params: Mapping[str, str], *, minor: int = 0) -> bytes:
    """StartupMessage for protocol 3.``minor``; ``params`` must include ``user``."""
    if not params.get("user"):
        raise ProtocolViolation("a startup message needs a user name")
    body = _INT32.pack(PROTOCOL_3_0 | minor)
    body += b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _build_untyped(body)


def ssl_request() -> bytes:
    return _build_untyped(_INT32.pack(SSL_REQUEST_CODE))


def gssenc_request() -> bytes:
    return _build_untyped(_INT32.pack(GSSENC_REQUEST_CODE))


def cancel_request(pid: int, secret_key: bytes) -> bytes:
    return _build_untyped(_INT32.pack(CANCEL_REQUEST_CODE) + _INT32.pack(pid) + secret_key)


def password_message(password: Sensitive[str] | bytes) -> bytes:
    """A cleartext password (revealed here, at the line that sends it) or an md5 answer."""
    secret = password if isinstance(password, bytes) else password.reveal().encode()
    return _build(b"p", _cstr(secret))


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    payload = _INT32.pack(-1) if data is None else _INT32.pack(len(data)) + data
    return _build(b"p", _cstr(mechanism) + payload)


def sasl_response(data: bytes) -> bytes:
    return _build(b"p", data)


def query(sql: str) -> bytes:
    return _build(b"Q", _cstr(sql))


def sync() -> bytes:
    return _build(b"S")


def terminate() -> bytes:
    return _build(b"X")


# backend


def encryption_refused() -> bytes:
    """The one-byte "N" answer to SSLRequest / GSSENCRequest."""
    return b"N"


def encryption_accepted() -> bytes:
    """The one-byte "S" answer to SSLRequest (start TLS right after sending it)."""
    return b"S"


def authentication_ok() -> bytes:
    return _build(b"R", _INT32.pack(0))


def authentication_cleartext_password() -> bytes:
    return _build(b"R", _INT32.pack(3))


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ProtocolViolation("an MD5 salt is 4 bytes")
    return _build(b"R", _INT32.pack(5) + salt)


def authentication_sasl(mechanisms: Iterable[str]) -> bytes:
    names = b"".join(_cstr(m) for m in mechanisms)
    if not names:
        raise ProtocolViolation("offer at least one SASL mechanism")
    return _build(b"R", _INT32.pack(10) + names + b"\x00")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _build(b"R", _INT32.pack(11) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _build(b"R", _INT32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _build(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret_key: bytes) -> bytes:
    if not 4 <= len(secret_key) <= MAX_CANCEL_KEY_LENGTH:
        raise ProtocolViolation("cancel key length out of range")
    return _build(b"K", _INT32.pack(pid) + secret_key)


def ready_for_query(status: str = "I") -> bytes:
    if status not in ("I", "T", "E"):
        raise ProtocolViolation("transaction status is I, T or E")
    return _build(b"Z", status.encode())


def negotiate_protocol_version(newest_minor: int, unsupported_options: Iterable[str] = ()) -> bytes:
    options = list(unsupported_options)
    body = _INT32.pack(newest_minor) + _INT32.pack(len(options))
    return _build(b"v", body + b"".join(_cstr(o) for o in options))


_ERROR_SEVERITIES = ("ERROR", "FATAL", "PANIC")
_NOTICE_SEVERITIES = ("WARNING", "NOTICE", "DEBUG", "INFO", "LOG")
_SQLSTATE_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _report(
    message_type: bytes,
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    if len(sqlstate) != 5 or not all(c in _SQLSTATE_CHARS for c in sqlstate):
        raise ProtocolViolation("an SQLSTATE is five digits or upper-case ASCII letters")
    parts = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail is not None:
        parts.append((b"D", detail))
    if hint is not None:
        parts.append((b"H", hint))
    return _build(message_type, b"".join(code + _cstr(text) for code, text in parts) + b"\x00")


def error_response(
    severity: str, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
) -> bytes:
    """ErrorResponse with S and V (severity), C, M and optional D, H fields."""
    if severity not in _ERROR_SEVERITIES:
        raise ProtocolViolation(f"error severity is one of {', '.join(_ERROR_SEVERITIES)}")
    return _report(b"E", severity, sqlstate, message, detail, hint)


def notice_response(
    severity: str, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
) -> bytes:
    if severity not in _NOTICE_SEVERITIES:
        raise ProtocolViolation(f"notice severity is one of {', '.join(_NOTICE_SEVERITIES)}")
    return _report(b"N", severity, sqlstate, message, detail, hint)


def fatal_error(
    sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
) -> bytes:
    """A FATAL ErrorResponse: the server side of the connection ends after sending it."""
    return error_response("FATAL", sqlstate, message, detail, hint)


#: SQLSTATEs the proxy answers with
SQLSTATE_ADMIN_SHUTDOWN = "57P01"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_PROTOCOL_VIOLATION = "08P01"


#: the hints of a cut session's FATAL: its grant ended, or only the node holding it did
REQUEST_AGAIN_HINT = "Request access again to reconnect."


def grant_expired_error(
    message: str = "terminating connection because the access grant expired",
    hint: str = REQUEST_AGAIN_HINT,
) -> bytes:
    """FATAL 57P01 (admin_shutdown: drivers treat it as the server ending the session)."""
    return fatal_error(SQLSTATE_ADMIN_SHUTDOWN, message, hint=hint)


def authentication_failed_error(user: str) -> bytes:
    """FATAL 28P01 worded exactly like PostgreSQL, telling nothing about why."""
    return fatal_error(
        SQLSTATE_INVALID_PASSWORD, f'password authentication failed for user "{user}"'
    )


def protocol_violation_error(violation: ProtocolViolation) -> bytes:
    """FATAL 08P01 carrying the violation's short reason (it never holds a secret)."""
    return fatal_error(SQLSTATE_PROTOCOL_VIOLATION, violation.message)


__all__ = [
    "CANCEL_REQUEST_CODE",
    "DEFAULT_MAX_AUTH_LENGTH",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_MAX_STARTUP_LENGTH",
    "GSSENC_REQUEST_CODE",
    "PROTOCOL_3_0",
    "SQLSTATE_ADMIN_SHUTDOWN",
    "SQLSTATE_INVALID_PASSWORD",
    "SQLSTATE_PROTOCOL_VIOLATION",
    "SSL_REQUEST_CODE",
    "AuthPhase",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationOther",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "BackendKeyData",
    "BackendReader",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "FrontendReader",
    "FrontendRelay",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "ProtocolViolation",
    "Query",
    "RawMessage",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLAnswer",
    "SSLRequest",
    "StartupMessage",
    "Surfaced",
    "Sync",
    "Terminate",
    "authentication_cleartext_password",
    "authentication_failed_error",
    "authentication_md5_password",
    "authentication_ok",
    "authentication_sasl",
    "authentication_sasl_continue",
    "authentication_sasl_final",
    "backend_key_data",
    "cancel_request",
    "encryption_accepted",
    "encryption_refused",
    "error_response",
    "fatal_error",
    "grant_expired_error",
    "gssenc_request",
    "negotiate_protocol_version",
    "notice_response",
    "parameter_status",
    "parse_backend_message",
    "parse_frontend_message",
    "password_message",
    "protocol_violation_error",
    "query",
    "ready_for_query",
    "sasl_initial_response",
    "sasl_response",
    "ssl_request",
    "startup_message",
    "sync",
    "terminate",
]
