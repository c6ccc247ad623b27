"""Command encoding and envelope address validation (RFC 5321 §4.1, RFC 6531).

Every function returns the bytes of one complete command line, or raises a
:class:`LocalProtocolError` before anything is encoded: no argument can carry a
character that ends a line early or smuggles a second command onto it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache

from .errors import InvalidAddress, InvalidArgument

DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"

#: RFC 5321 atext; the dot is allowed anywhere in a local part (see _check_unquoted).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_PLAIN_LOCAL = re.compile(rf"[{_ATEXT}.]{{1,64}}")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9.-]{1,253}")
#: The shape of nearly every real address: one regex call decides the local part.
_FAST = re.compile(f"{_PLAIN_LOCAL.pattern}@{_PLAIN_DOMAIN.pattern}")
_UNQUOTED_ASCII = re.compile(rf"[{_ATEXT}.]+")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
#: a whole ASCII host name of such labels, 253 characters at most
_PLAIN_HOST = re.compile(rf"(?=.{{1,253}}\Z)(?:{_LABEL.pattern}\.)*{_LABEL.pattern}", re.ASCII)
#: C0 controls, DEL and C1 controls: never allowed anywhere.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The IDNA 2003 label separators that are not "." (RFC 3490 §3.1).
_IDEOGRAPHIC_DOTS = re.compile("[\u3002\uff0e\uff61]")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value: printable, no "=", no space
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_SASL_MECH = re.compile(r"[A-Za-z0-9_-]{1,20}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_BODY_TYPES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})


# -- addresses ---------------------------------------------------------------------


def validate_address(address: str, *, smtputf8: bool = False) -> str:
    """The address as it goes between ``<`` and ``>``, or :class:`InvalidAddress`.

    Non-ASCII domains become A-labels unless ``smtputf8`` (then NFC U-labels);
    a non-ASCII local part needs ``smtputf8`` and goes out exactly as given:
    local parts are case-sensitive and belong to the receiving system.
    """
    if _FAST.fullmatch(address):
        local, _, domain = address.rpartition("@")
        wire = local + "@" + _domain(address, domain, False)
        if len(wire) > 254:
            raise InvalidAddress(address, "address longer than 254 octets")
        return wire
    return _validate_slow(address, smtputf8)


def is_plain(address: str, domain: str) -> bool:
    """Whether ``address`` (whose part after the last "@" is ``domain``) is an
    everyday one -- ASCII, unquoted, its domain checked -- that
    ``validate_address`` accepts unchanged; if not, ``validate_address`` gives
    the verdict.  The engine's per-recipient fast path composes the same two
    checks, with :func:`is_plain_domain` done once per domain."""
    local, at, _ = address.rpartition("@")
    return bool(at) and is_plain_local(address, local) and is_plain_domain(domain)


def is_plain_local(address: str, local: str) -> bool:
    """Whether ``address`` fits in 254 octets and its ``local`` part is
    dot-atom text, ASCII, unquoted (see :func:`is_plain`)."""
    return len(address) <= 254 and _PLAIN_LOCAL.fullmatch(local) is not None


def is_plain_domain(domain: str) -> bool:
    """Whether a domain is a well-formed ASCII host name (see :func:`is_plain`):
    what :func:`_domain_wire` accepts of a plain one, in one match (intake
    asks once per domain, and a long tail's domains miss any cache)."""
    return _PLAIN_HOST.fullmatch(domain) is not None


def _validate_slow(address: str, smtputf8: bool) -> str:
    if "@" not in address:
        raise InvalidAddress(address, "missing @")
    local, _, domain = address.rpartition("@")
    if not local:
        raise InvalidAddress(address, "empty local part")
    if not domain:
        raise InvalidAddress(address, "empty domain")
    _check_characters(address, local, quoted=local.startswith('"'))
    _check_characters(address, domain, quoted=False)
    if not local.isascii() and not smtputf8:
        raise InvalidAddress(address, "non-ASCII local part needs SMTPUTF8", needs_smtputf8=True)
    if local.startswith('"'):
        _check_quoted(address, local)
    else:
        _check_unquoted(address, local)
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(address, "local part longer than 64 octets")
    wire = local + "@" + _domain(address, domain, smtputf8)
    if len(wire.encode("utf-8")) > 254:
        raise InvalidAddress(address, "address longer than 254 octets")
    return wire


def _check_characters(address: str, part: str, *, quoted: bool) -> None:
    """Refuse what could end a line, split an argument or close the ``<...>``."""
    bad = _CONTROL.search(part)
    if bad:
        raise InvalidAddress(address, f"control character U+{ord(bad.group()):04X} in address")
    if "<" in part or ">" in part:
        raise InvalidAddress(address, "angle bracket in address")
    for ch in part:
        if ch.isspace() and not (quoted and ch == " "):
            raise InvalidAddress(address, "whitespace in address")


def _check_quoted(address: str, local: str) -> None:
    """A quoted-string local part (RFC 5321 §4.1.2): balanced, escapes complete."""
    i, end = 1, len(local) - 1
    if end < 1 or local[end] != '"':
        raise InvalidAddress(address, "unbalanced quotes in local part")
    while i < end:
        ch = local[i]
        if ch == "\\":
            i += 1
            if i >= end:  # the backslash escapes the closing quote
                raise InvalidAddress(address, "unbalanced quotes in local part")
        elif ch == '"':
            raise InvalidAddress(address, "unbalanced quotes in local part")
        i += 1


def _check_unquoted(address: str, local: str) -> None:
    """atext and dots only (plus UTF-8 under SMTPUTF8).

    Dot placement is not policed: ``a..b`` and ``a.@`` violate RFC 5321's
    dot-string yet are real mailboxes at some providers, and dots cannot
    change the meaning of the command line.
    """
    if '"' in local:
        raise InvalidAddress(address, "unbalanced quotes in local part")
    if local.isascii():
        if _UNQUOTED_ASCII.fullmatch(local):
            return
        bad = next(ch for ch in local if not _UNQUOTED_ASCII.fullmatch(ch))
        raise InvalidAddress(address, f"character {bad!r} not allowed unquoted in local part")
    for ch in local:
        if ch.isascii() and not _UNQUOTED_ASCII.fullmatch(ch):
            raise InvalidAddress(address, f"character {ch!r} not allowed unquoted in local part")


def _domain(address: str, domain: str, smtputf8: bool) -> str:
    wire, reason = _domain_wire(domain, smtputf8 and not domain.isascii())
    if wire is None:
        raise InvalidAddress(address, reason)
    return wire


@lru_cache(maxsize=8192)
def _domain_wire(domain: str, keep_unicode: bool) -> tuple[str | None, str]:
    """(wire form, "") or (None, reason); cached since a bulk run repeats domains."""
    if domain.startswith("["):
        return _address_literal(domain)
    if domain.isascii():
        ascii_form = domain
    else:
        try:
            ascii_form = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None, "domain is not a valid internationalised domain name"
        if keep_unicode:
            domain = _IDEOGRAPHIC_DOTS.sub(".", unicodedata.normalize("NFC", domain))
        else:
            domain = ascii_form
    if len(ascii_form) > 255 or len(domain.encode("utf-8")) > 255:
        return None, "domain longer than 255 octets"
    if not all(_LABEL.fullmatch(label) for label in ascii_form.split(".")):
        return None, "malformed domain"
    return domain, ""


def _address_literal(domain: str) -> tuple[str | None, str]:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``; no zone ids, no general literals."""
    literal = domain[1:-1] if domain.endswith("]") else ""
    try:
        if literal[:5].upper() == "IPV6:" and "%" not in literal:
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return None, "bad address literal"
    return domain, ""


def needs_smtputf8(address: str) -> bool:
    """Non-ASCII in the local part (a domain can always be A-labelled)."""
    if address.isascii():
        return False
    return not address.rpartition("@")[0].isascii()


# -- commands ----------------------------------------------------------------------


def _hostname(name: str) -> str:
    """Lenient on purpose: ``socket.getfqdn()`` can return names with ``_`` in them."""
    if not _VISIBLE.fullmatch(name):
        raise InvalidArgument(f"invalid EHLO name {name!r}: needs printable ASCII, no spaces")
    return name


def ehlo(hostname: str) -> bytes:
    return b"EHLO " + _hostname(hostname).encode("ascii") + b"\r\n"


def helo(hostname: str) -> bytes:
    return b"HELO " + _hostname(hostname).encode("ascii") + b"\r\n"


def _params(params: Mapping[str, str | None] | None, taken: set[str]) -> str:
    """ESMTP parameters (RFC 5321 §4.1.2 esmtp-param); ``taken`` are already written."""
    if not params:
        return ""
    out = []
    for key, value in params.items():
        if not _KEYWORD.fullmatch(key):
            raise InvalidArgument(f"invalid ESMTP parameter name {key!r}")
        if key.upper() in taken:
            raise InvalidArgument(f"ESMTP parameter {key!r} given twice")
        taken.add(key.upper())
        if value is None:
            out.append(f" {key}")
        elif _VALUE.fullmatch(value):
            out.append(f" {key}={value}")
        else:
            raise InvalidArgument(f"invalid value {value!r} for ESMTP parameter {key}")
    return "".join(out)


def mail_from(
    address: str,
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
    params: Mapping[str, str | None] | None = None,
) -> bytes:
    """``MAIL FROM:<address>`` with SIZE, BODY, SMTPUTF8 and extra parameters.

    An empty address is the null reverse-path ``<>`` (bounces, DSNs).
    """
    path = validate_address(address, smtputf8=smtputf8) if address else ""
    extra = ""
    taken: set[str] = set()
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"invalid SIZE {size!r}")
        extra += f" SIZE={size}"
        taken.add("SIZE")
    if body is not None:
        if body not in _BODY_TYPES:
            raise InvalidArgument(f"invalid BODY {body!r}")
        extra += f" BODY={body}"
        taken.add("BODY")
    if smtputf8:
        extra += " SMTPUTF8"
        taken.add("SMTPUTF8")
    return f"MAIL FROM:<{path}>{extra}{_params(params, taken)}\r\n".encode()


def rcpt_to(
    address: str, *, smtputf8: bool = False, params: Mapping[str, str | None] | None = None
) -> bytes:
    """``RCPT TO:<address>``; UTF-8 only with ``smtputf8`` (then MAIL must carry it too)."""
    path = validate_address(address, smtputf8=smtputf8)
    return f"RCPT TO:<{path}>{_params(params, set())}\r\n".encode()


def _text_arg(verb: str, text: str) -> bytes:
    if not text or not _PRINTABLE.fullmatch(text):
        raise InvalidArgument(f"invalid {verb} argument {text!r}: needs printable ASCII")
    return f"{verb} {text}\r\n".encode("ascii")


def noop(text: str | None = None) -> bytes:
    return b"NOOP\r\n" if not text else _text_arg("NOOP", text)


def vrfy(s: str) -> bytes:
    return _text_arg("VRFY", s)


def expn(s: str) -> bytes:
    return _text_arg("EXPN", s)


def bdat(size: int, *, last: bool) -> bytes:
    """``BDAT <size> [LAST]`` (RFC 3030); ``size`` counts the octets that follow."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"invalid BDAT size {size!r}")
    return f"BDAT {size}{' LAST' if last else ''}\r\n".encode("ascii")


def auth(mechanism: str, initial_response: str | None = None) -> bytes:
    """``AUTH <mechanism> [initial-response]`` (RFC 4954 §4).

    An empty initial response is sent as ``=``, which is how RFC 4954 tells it
    apart from no initial response at all.
    """
    if not _SASL_MECH.fullmatch(mechanism):
        raise InvalidArgument(f"invalid SASL mechanism {mechanism!r}")
    if initial_response is None:
        return f"AUTH {mechanism}\r\n".encode("ascii")
    if initial_response and not _BASE64.fullmatch(initial_response):
        raise InvalidArgument("SASL initial response is not base64")
    return f"AUTH {mechanism} {initial_response or '='}\r\n".encode("ascii")


def line(text: str) -> bytes:
    """A bare line (a SASL continuation response); may be empty."""
    if not _PRINTABLE.fullmatch(text):
        raise InvalidArgument("continuation line must be printable ASCII")
    return text.encode("ascii") + b"\r\n"
