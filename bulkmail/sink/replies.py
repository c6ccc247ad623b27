"""The sink's ordinary replies, pre-encoded: the hot path only joins bytes.

Enhanced status codes (RFC 3463) on everything but the greeting, EHLO and
HELO, as RFC 2034 asks.
"""

from __future__ import annotations

from .config import SinkConfig

OK = b"250 2.0.0 Ok\r\n"
SENDER_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
VRFY = b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
READY_TLS = b"220 2.0.0 Ready to start TLS\r\n"
HELP = b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT STARTTLS AUTH\r\n"
AUTH_OK = b"235 2.7.0 Authentication successful\r\n"

IDLE_TIMEOUT = b"421 4.4.2 Idle timeout, closing connection\r\n"
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"

UNRECOGNIZED = b"500 5.5.2 Error: command not recognized\r\n"
LINE_TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
NOT_IMPLEMENTED = b"502 5.5.1 Error: command not implemented\r\n"
NEED_EHLO = b"503 5.5.1 Error: send HELO/EHLO first\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"
NO_VALID_RCPTS = b"554 5.5.1 Error: no valid recipients\r\n"
BDAT_IN_PROGRESS = b"503 5.5.1 Error: BDAT transaction in progress, only BDAT or RSET\r\n"
DATA_AFTER_BDAT = b"503 5.5.1 Error: DATA after BDAT in one transaction\r\n"
HELO_SYNTAX = b"501 5.5.4 Syntax: EHLO/HELO domain\r\n"
MAIL_SYNTAX = b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"
RCPT_SYNTAX = b"501 5.5.4 Syntax: RCPT TO:<address> [parameters]\r\n"
BDAT_SYNTAX = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
NO_ARGUMENTS = b"501 5.5.4 Syntax: no arguments allowed\r\n"
BAD_SENDER = b"501 5.1.7 Bad sender address syntax\r\n"
BAD_RCPT = b"501 5.1.3 Bad recipient address syntax\r\n"
BAD_PARAMETER = b"555 5.5.4 Unsupported MAIL/RCPT parameter\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
RCPT_LIMIT = b"452 4.5.3 Too many recipients\r\n"

NO_TLS = b"502 5.5.1 Error: STARTTLS not available\r\n"
ALREADY_TLS = b"503 5.5.1 Error: TLS already active\r\n"
NO_AUTH = b"502 5.5.1 Error: authentication not enabled\r\n"
AUTH_NEEDS_TLS = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
ALREADY_AUTHENTICATED = b"503 5.5.1 Error: already authenticated\r\n"
AUTH_IN_TRANSACTION = b"503 5.5.1 Error: MAIL transaction in progress\r\n"
AUTH_REQUIRED = b"530 5.7.0 Authentication required\r\n"
AUTH_MECHANISM = b"504 5.5.4 Unrecognized authentication type\r\n"
AUTH_MALFORMED = b"501 5.5.2 Cannot decode AUTH response\r\n"
AUTH_CANCELLED = b"501 5.7.0 Authentication cancelled\r\n"
AUTH_FAILED = b"535 5.7.8 Authentication credentials invalid\r\n"
AUTH_USERNAME = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
AUTH_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
AUTH_CONTINUE = b"334 \r\n"


def greeting(config: SinkConfig) -> bytes:
    return f"220 {config.hostname} ESMTP bulkmail sink\r\n".encode()


def helo(config: SinkConfig) -> bytes:
    return f"250 {config.hostname}\r\n".encode()


def ehlo(config: SinkConfig, *, tls_available: bool, tls_active: bool) -> bytes:
    """The EHLO reply for one state: STARTTLS only before TLS, AUTH only
    where credentials may be sent (after TLS, when TLS is configured)."""
    lines = [config.hostname]
    if config.pipelining:
        lines.append("PIPELINING")
    lines += [f"SIZE {config.max_message_size}", "8BITMIME", "SMTPUTF8",
              "ENHANCEDSTATUSCODES", "DSN"]
    if config.chunking:
        lines.append("CHUNKING")
    if tls_available and not tls_active:
        lines.append("STARTTLS")
    if config.auth is not None and (tls_active or not tls_available):
        lines.append("AUTH PLAIN LOGIN")
    head = "".join(f"250-{line}\r\n" for line in lines[:-1])
    return f"{head}250 {lines[-1]}\r\n".encode()


def queued(queue_id: str) -> bytes:
    return f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode()


def chunk_received(octets: int) -> bytes:
    return f"250 2.0.0 {octets} octets received\r\n".encode()
