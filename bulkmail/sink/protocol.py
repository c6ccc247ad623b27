"""One SMTP server connection, sans-IO: bytes in, replies out (RFC 5321,
RFC 2920 PIPELINING, RFC 3030 CHUNKING).

:meth:`SinkConnection.receive_data` handles every complete command and all
content in what it is given and returns every reply they produced as one
``bytes`` -- one write per read is what lets a pipelining client go fast.
Memory stays bounded whatever the client sends: command lines are capped,
content is streamed (:mod:`.content`), the recipients of a transaction are
capped, and repeated errors end the session.

Accepted messages are counted by the caller only once their 250 has been
written (:meth:`SinkConnection.take_accepted`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import replies
from .auth import SaslServer
from .config import SinkConfig
from .content import ChunkReader, Content, DotReader
from .faults import TRY_AGAIN_LATER, FaultPolicy
from .stats import ReceivedMessage, SinkStats

#: longest command line, CRLF excluded (RFC 5321 asks for 512, extensions need more)
MAX_LINE = 4096
#: protocol errors (500, 501, 503, ...) a session may make before it gets 421
MAX_ERRORS = 20
#: recipients per transaction, whatever ``max_rcpts`` says (RFC 5321 asks for 100)
HARD_RCPT_LIMIT = 10_000

_COMMAND, _AUTH, _DATA, _BDAT, _DISCARD = range(5)

_MAIL_PARAMETERS = frozenset({b"SIZE", b"BODY", b"SMTPUTF8", b"RET", b"ENVID", b"AUTH"})
_RCPT_PARAMETERS = frozenset({b"NOTIFY", b"ORCPT"})
_CONTROLS = bytes(range(32)) + b"\x7f<> "
_NOT_MISTAKES = frozenset({
    replies.NEED_MAIL, replies.NO_VALID_RCPTS, replies.TOO_BIG, replies.AUTH_REQUIRED,
})


class Accepted(NamedTuple):
    """Messages answered 250 since the last :meth:`SinkConnection.take_accepted`."""

    messages: int
    recipients: int
    octets: int
    records: list[ReceivedMessage]


class SinkConnection:
    """The server side of one SMTP connection, from greeting to QUIT.

    After each :meth:`receive_data`, the caller writes the replies, then
    looks at :attr:`closing` (close the connection) and :attr:`wants_tls`
    (start TLS, then call :meth:`tls_started`).
    """

    def __init__(
        self,
        config: SinkConfig,
        faults: FaultPolicy,
        stats: SinkStats,
        peer: str,
        *,
        tls_available: bool,
        tls_active: bool = False,
        session_id: int = 0,
    ) -> None:
        self.peer = peer
        self.closing = False
        self.wants_tls = False
        self._config = config
        self._faults = faults
        self._stats = stats
        self._tls_available = tls_available
        self._tls = tls_active
        self._session_id = session_id
        self._limit = config.max_message_size
        self._record = config.record_messages
        self._sasl = SaslServer(config.auth) if config.auth is not None else None
        self._leftover = b""
        self._out: list[bytes] = []
        self._mode = _COMMAND
        self._errors = 0
        self._greeted = False
        self._sender: bytes | None = None
        self._rcpts: list[bytes] = []
        self._data: DotReader | None = None
        #: the BDAT transaction's content; set from its first good chunk to LAST
        self._chunks: ChunkReader | None = None
        #: the chunk being read now: ``_chunks``, or a throwaway when it fails
        self._chunk: ChunkReader | None = None
        self._chunk_size = 0
        self._chunk_last = False
        self._chunk_error: bytes | None = None
        self._queued = 0
        self._accepted: list[ReceivedMessage] = []
        self._accepted_messages = 0
        self._accepted_rcpts = 0
        self._accepted_octets = 0

    def greeting(self) -> bytes:
        return replies.greeting(self._config)

    # -- the input loop --------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> bytes:
        """Consume ``data``; the replies to write (possibly ``b""``)."""
        if type(data) is not bytes:
            data = bytes(data)  # slices must be hashable for the verb table
        buf = self._leftover + data if self._leftover else data
        pos, n = 0, len(buf)
        out = self._out
        while pos < n and not (self.closing or self.wants_tls):
            mode = self._mode
            if mode <= _AUTH:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if n - pos > MAX_LINE:  # no end in sight: skip to the next CRLF
                        self._error(replies.LINE_TOO_LONG)
                        self._mode = _DISCARD
                        pos = n - 1 if buf.endswith(b"\r") else n
                    break
                if nl - pos > MAX_LINE:
                    self._error(replies.LINE_TOO_LONG)
                elif mode == _COMMAND:
                    self._command(buf[pos:nl])
                else:
                    self._auth_response(buf[pos:nl])
                pos = nl + 2
            elif mode == _DATA:
                reader = self._data
                assert reader is not None
                pos = reader.feed(buf, pos)
                if not reader.done:
                    break
                self._mode = _COMMAND
                self._end_of_message(reader, reader.message)
            elif mode == _BDAT:
                chunk = self._chunk
                assert chunk is not None
                pos = chunk.feed(buf, pos)
                if chunk.remaining:
                    break
                self._end_of_chunk()
            else:  # _DISCARD: the rest of an over-long line
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    pos = n - 1 if buf.endswith(b"\r") else n
                    break
                pos = nl + 2
                self._mode = _COMMAND
        if self.closing or self.wants_tls:
            # nothing pipelined after STARTTLS may survive into TLS (the 2011
            # STARTTLS command injection flaw); nothing matters after a close
            self._leftover = b""
        else:
            self._leftover = buf[pos:] if pos < n else b""
        if not out:
            return b""
        batch = b"".join(out)
        out.clear()
        return batch

    def take_accepted(self) -> Accepted | None:
        """Messages answered 250 in the replies just returned, to count once written."""
        if not self._accepted_messages:
            return None
        accepted = Accepted(
            self._accepted_messages, self._accepted_rcpts, self._accepted_octets, self._accepted
        )
        self._accepted = []
        self._accepted_messages = self._accepted_rcpts = self._accepted_octets = 0
        return accepted

    def tls_started(self) -> None:
        """TLS is up after STARTTLS: the session starts over (RFC 3207 §4.2)."""
        self.wants_tls = False
        self._tls = True
        self._greeted = False
        self._reset()
        if self._config.auth is not None:
            self._sasl = SaslServer(self._config.auth)

    # -- commands --------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        space = line.find(b" ")
        if space < 0:
            verb, argument = line.upper(), b""
        else:
            verb, argument = line[:space].upper(), line[space + 1 :]
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._error(replies.UNRECOGNIZED)
        else:
            handler(self, argument)

    def _error(self, reply: bytes) -> None:
        """A refused command; too many client mistakes end the session.

        Refusals a correct pipelining client meets (RFC 2920: DATA or BDAT
        after every RCPT failed) are not mistakes, and delivering a message
        forgives the earlier ones, as Postfix's hard error limit does.
        """
        if reply in _NOT_MISTAKES:
            self._out.append(reply)
            return
        self._errors += 1
        if self._errors > MAX_ERRORS:
            self._out.append(TRY_AGAIN_LATER)
            self.closing = True
        else:
            self._out.append(reply)

    def _reset(self) -> None:
        self._sender = None
        self._rcpts = []
        self._chunks = None

    def _ehlo(self, argument: bytes) -> None:
        if not argument.strip():
            self._error(replies.HELO_SYNTAX)
            return
        self._greeted = True
        self._reset()
        self._out.append(
            replies.ehlo(self._config, tls_available=self._tls_available, tls_active=self._tls)
        )

    def _helo(self, argument: bytes) -> None:
        if not argument.strip():
            self._error(replies.HELO_SYNTAX)
            return
        self._greeted = True
        self._reset()
        self._out.append(replies.helo(self._config))

    def _mail(self, argument: bytes) -> None:
        if not self._greeted:
            self._error(replies.NEED_EHLO)
        elif self._sender is not None:
            self._error(replies.NESTED_MAIL)
        elif self._sasl is not None and not self._sasl.authenticated:
            self._error(replies.AUTH_REQUIRED)
        else:
            parsed = _path(argument, b"FROM:")
            if parsed is None:
                self._error(replies.MAIL_SYNTAX)
                return
            address, parameters = parsed
            if address.translate(None, _CONTROLS) != address:
                self._error(replies.BAD_SENDER)
                return
            reply = self._mail_parameters(parameters)
            if reply is not None:
                self._error(reply)
                return
            self._sender = address
            self._rcpts = []
            self._stats.transactions += 1
            self._out.append(replies.SENDER_OK)

    def _mail_parameters(self, parameters: bytes) -> bytes | None:
        for parameter in parameters.split():
            key, _, value = parameter.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit() or len(value) > 18:
                    return replies.MAIL_SYNTAX
                if int(value) > self._limit:
                    return replies.TOO_BIG
            elif key not in _MAIL_PARAMETERS:
                return replies.BAD_PARAMETER
        return None

    def _rcpt(self, argument: bytes) -> None:
        if self._sender is None:
            self._error(replies.NEED_MAIL if self._greeted else replies.NEED_EHLO)
            return
        if self._chunks is not None:
            self._error(replies.BDAT_IN_PROGRESS)
            return
        parsed = _path(argument, b"TO:")
        if parsed is None:
            self._error(replies.RCPT_SYNTAX)
            return
        address, parameters = parsed
        if not address or address.translate(None, _CONTROLS) != address:
            self._error(replies.BAD_RCPT)
            return
        for parameter in parameters.split():
            if parameter.partition(b"=")[0].upper() not in _RCPT_PARAMETERS:
                self._error(replies.BAD_PARAMETER)
                return
        rcpts = self._rcpts
        if len(rcpts) >= HARD_RCPT_LIMIT:
            self._out.append(replies.RCPT_LIMIT)
            return
        failure = self._faults.rcpt_reply(address, len(rcpts))
        if failure is None:
            rcpts.append(address)
            self._out.append(replies.RCPT_OK)
            return
        if failure[0] == 0x34:  # "4"
            self._stats.deferred += 1
        else:
            self._stats.rejected += 1
        self._out.append(failure)

    def _data_command(self, argument: bytes) -> None:
        if argument:
            self._error(replies.NO_ARGUMENTS)
        elif self._sender is None:
            self._error(replies.NEED_MAIL if self._greeted else replies.NEED_EHLO)
        elif self._chunks is not None:
            self._error(replies.DATA_AFTER_BDAT)
        elif not self._rcpts:
            self._error(replies.NO_VALID_RCPTS)
        else:
            self._data = DotReader(self._limit, self._record)
            self._mode = _DATA
            self._out.append(replies.START_DATA)

    def _bdat(self, argument: bytes) -> None:
        parts = argument.split()
        if not (
            1 <= len(parts) <= 2
            and parts[0].isdigit()
            and len(parts[0]) <= 18
            and (len(parts) == 1 or parts[1].upper() == b"LAST")
        ):
            # the chunk's length is unknown, so its end can never be found again
            self._out.append(replies.BDAT_SYNTAX)
            self.closing = True
            return
        error = None
        if not self._config.chunking:
            error = replies.NOT_IMPLEMENTED
        elif self._sender is None:
            error = replies.NEED_MAIL if self._greeted else replies.NEED_EHLO
        elif not self._rcpts:
            error = replies.NO_VALID_RCPTS
        if error is None:
            if self._chunks is None:
                self._chunks = ChunkReader(self._limit, self._record)
            chunk = self._chunks
        else:
            chunk = ChunkReader(0, record=False)  # read and forget: we stay in sync
        self._chunk = chunk
        self._chunk_error = error
        self._chunk_size = chunk.remaining = int(parts[0])
        self._chunk_last = len(parts) == 2
        self._mode = _BDAT
        if not chunk.remaining:
            self._end_of_chunk()

    def _end_of_chunk(self) -> None:
        self._mode = _COMMAND
        if self._chunk_error is not None:
            self._error(self._chunk_error)
            return
        chunks = self._chunks
        assert chunks is not None
        if self._chunk_last:
            self._end_of_message(chunks, chunks.message)
        elif chunks.too_big:
            self._out.append(replies.TOO_BIG)
        else:
            self._out.append(replies.chunk_received(self._chunk_size))

    def _end_of_message(self, content: Content, message: Callable[[], bytes]) -> None:
        sender, rcpts = self._sender, self._rcpts
        self._reset()
        self._data = None
        if self._faults.drop_transaction():
            self._stats.dropped += 1
            self.closing = True  # no reply: the client cannot know if it arrived
            return
        if content.too_big:
            self._out.append(replies.TOO_BIG)
            return
        self._queued += 1
        self._errors = 0
        self._accepted_messages += 1
        self._accepted_rcpts += len(rcpts)
        self._accepted_octets += content.size
        if self._record:
            self._accepted.append(ReceivedMessage(
                self.peer,
                (sender or b"").decode("utf-8", "replace"),
                [r.decode("utf-8", "replace") for r in rcpts],
                message(),
            ))
        self._out.append(replies.queued(f"{self._session_id:X}.{self._queued}"))

    def _rset(self, argument: bytes) -> None:
        self._reset()
        self._out.append(replies.OK)

    def _noop(self, argument: bytes) -> None:
        self._out.append(replies.OK)

    def _quit(self, argument: bytes) -> None:
        self._out.append(replies.BYE)
        self.closing = True

    def _vrfy(self, argument: bytes) -> None:
        if argument.strip():
            self._out.append(replies.VRFY)
        else:
            self._error(replies.RCPT_SYNTAX)

    def _help(self, argument: bytes) -> None:
        self._out.append(replies.HELP)

    def _not_implemented(self, argument: bytes) -> None:
        self._error(replies.NOT_IMPLEMENTED)

    def _starttls(self, argument: bytes) -> None:
        if argument:
            self._error(replies.NO_ARGUMENTS)
        elif not self._tls_available:
            self._error(replies.NO_TLS)
        elif self._tls:
            self._error(replies.ALREADY_TLS)
        else:
            self._out.append(replies.READY_TLS)
            self.wants_tls = True

    def _auth(self, argument: bytes) -> None:
        sasl = self._sasl
        if sasl is None:
            self._error(replies.NO_AUTH)
        elif not self._greeted:
            self._error(replies.NEED_EHLO)
        elif self._tls_available and not self._tls:
            self._error(replies.AUTH_NEEDS_TLS)
        elif sasl.authenticated:
            self._error(replies.ALREADY_AUTHENTICATED)
        elif self._sender is not None:
            self._error(replies.AUTH_IN_TRANSACTION)
        else:
            self._out.append(sasl.start(argument))
            if sasl.in_progress:
                self._mode = _AUTH

    def _auth_response(self, line: bytes) -> None:
        sasl = self._sasl
        assert sasl is not None
        self._out.append(sasl.respond(line))
        if not sasl.in_progress:
            self._mode = _COMMAND


_Handler = Callable[[SinkConnection, bytes], None]

_HANDLERS: dict[bytes, _Handler] = {
    b"EHLO": SinkConnection._ehlo,
    b"HELO": SinkConnection._helo,
    b"MAIL": SinkConnection._mail,
    b"RCPT": SinkConnection._rcpt,
    b"DATA": SinkConnection._data_command,
    b"BDAT": SinkConnection._bdat,
    b"RSET": SinkConnection._rset,
    b"NOOP": SinkConnection._noop,
    b"QUIT": SinkConnection._quit,
    b"VRFY": SinkConnection._vrfy,
    b"EXPN": SinkConnection._not_implemented,
    b"HELP": SinkConnection._help,
    b"TURN": SinkConnection._not_implemented,
    b"ETRN": SinkConnection._not_implemented,
    b"STARTTLS": SinkConnection._starttls,
    b"AUTH": SinkConnection._auth,
}


def _path(argument: bytes, keyword: bytes) -> tuple[bytes, bytes] | None:
    """``FROM:<address> params`` -> (address, params); None if malformed.

    A space after the colon is tolerated, as most servers do.
    """
    if argument[: len(keyword)].upper() != keyword:
        return None
    rest = argument[len(keyword) :].lstrip(b" ")
    if not rest.startswith(b"<"):
        return None
    close = rest.find(b">")
    if close < 0:
        return None
    parameters = rest[close + 1 :]
    if parameters and not parameters.startswith(b" "):
        return None
    return rest[1:close], parameters
