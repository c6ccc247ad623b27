"""Command encoding and envelope address validation (RFC 5321 §4.1, RFC 6531).

Every function returns one complete command line; nothing containing a
character that could end or smuggle a line is ever encoded.
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

_SIMPLE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,255}$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f<>]")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")


def _check_domain(address: str, domain: str, smtputf8: bool) -> str:
    wire, reason = _domain_wire(domain, smtputf8)
    if wire is None:
        raise InvalidAddress(address, reason or "malformed domain")
    return wire


@lru_cache(maxsize=8192)
def _domain_wire(domain: str, smtputf8: bool) -> tuple[str | None, str | None]:
    """(wire form, None) or (None, reason); cached since a bulk run repeats domains."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].upper() == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return None, "bad address literal"
        return domain, None
    check = domain
    if not domain.isascii():
        try:
            ascii_form = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None, "domain is not a valid IDN"
        check = ascii_form
        domain = unicodedata.normalize("NFC", domain) if smtputf8 else ascii_form
    if len(check.encode()) > 255:
        return None, "domain longer than 255 octets"
    labels = check.rstrip(".").split(".") if check else []
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        return None, "malformed domain"
    return domain, None


def _check_local(address: str, local: str, smtputf8: bool) -> None:
    if not local:
        raise InvalidAddress(address, "empty local part")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(address, "local part longer than 64 octets")
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise InvalidAddress(address, "unbalanced quotes in local part")
        inner = local[1:-1]
        if re.search(r'[\x00-\x1f\x7f-\x9f]', inner) or re.search(r'(?<!\\)"', inner):
            raise InvalidAddress(address, "forbidden character in quoted local part")
    elif '"' in local:
        raise InvalidAddress(address, "unbalanced quotes in local part")
    elif not local.isascii() and not smtputf8:
        raise InvalidAddress(address, "non-ASCII local part needs SMTPUTF8")


def validate_address(address: str, *, smtputf8: bool = False) -> str:
    """The address as it goes between ``<`` and ``>``, or :class:`InvalidAddress`."""
    if _SIMPLE.fullmatch(address) and ".." not in address:
        local, _, domain = address.rpartition("@")
        if not local.startswith(".") and not local.endswith("."):
            return local + "@" + _check_domain(address, domain, smtputf8)
    if "@" not in address:
        raise InvalidAddress(address, "missing @")
    local, _, domain = address.rpartition("@")
    if local.startswith('"'):
        inner_bad = _CONTROL.search(local.replace(" ", "x"))
    else:
        inner_bad = _CONTROL.search(local)
    if inner_bad or _CONTROL.search(domain):
        raise InvalidAddress(address, "control character, space or angle bracket in address")
    _check_local(address, local, smtputf8)
    if not local.isascii() and not smtputf8:
        raise InvalidAddress(address, "non-ASCII local part needs SMTPUTF8")
    if not domain:
        raise InvalidAddress(address, "empty domain")
    wire = local + "@" + _check_domain(address, domain, smtputf8)
    if len(wire.encode("utf-8")) > 254:
        raise InvalidAddress(address, "address longer than 254 octets")
    return wire


def needs_smtputf8(address: str) -> bool:
    """Non-ASCII in the local part (a domain can always be A-labelled)."""
    if address.isascii():
        return False
    return not address.rpartition("@")[0].isascii()


def _hostname(name: str) -> str:
    if not name or _CONTROL.search(name) or not name.isascii():
        raise InvalidArgument(f"invalid EHLO name {name!r}")
    return name


def ehlo(hostname: str) -> bytes:
    return f"EHLO {_hostname(hostname)}\r\n".encode("ascii")


def helo(hostname: str) -> bytes:
    return f"HELO {_hostname(hostname)}\r\n".encode("ascii")


def _params(params: Mapping[str, str | None] | None) -> str:
    if not params:
        return ""
    out = []
    for key, value in params.items():
        if not _KEYWORD.fullmatch(key):
            raise InvalidArgument(f"invalid ESMTP parameter name {key!r}")
        if value is None:
            out.append(f" {key}")
        elif not _VALUE.fullmatch(value):
            raise InvalidArgument(f"invalid ESMTP parameter value {value!r}")
        else:
            out.append(f" {key}={value}")
    return "".join(out)


def mail_from(
    address: str,
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
    params: Mapping[str, str | None] | None = None,
) -> bytes:
    path = validate_address(address, smtputf8=smtputf8) if address else ""
    extra = ""
    if size is not None:
        extra += f" SIZE={int(size)}"
    if body is not None:
        if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
            raise InvalidArgument(f"invalid BODY {body!r}")
        extra += f" BODY={body}"
    if smtputf8:
        extra += " SMTPUTF8"
    return f"MAIL FROM:<{path}>{extra}{_params(params)}\r\n".encode()


def rcpt_to(
    address: str, *, smtputf8: bool = False, params: Mapping[str, str | None] | None = None
) -> bytes:
    path = validate_address(address, smtputf8=smtputf8)
    return f"RCPT TO:<{path}>{_params(params)}\r\n".encode()


def _text_arg(verb: str, text: str) -> bytes:
    if _CONTROL.search(text.replace(" ", "x")) or not text.isascii():
        raise InvalidArgument(f"invalid {verb} argument {text!r}")
    return f"{verb} {text}\r\n".encode("ascii")


def noop(text: str | None = None) -> bytes:
    return b"NOOP\r\n" if text is None else _text_arg("NOOP", text)


def vrfy(text: str) -> bytes:
    return _text_arg("VRFY", text)


def expn(text: str) -> bytes:
    return _text_arg("EXPN", text)


def bdat(size: int, *, last: bool) -> bytes:
    if size < 0:
        raise InvalidArgument("BDAT size must be >= 0")
    return f"BDAT {size}{' LAST' if last else ''}\r\n".encode("ascii")


def auth(mechanism: str, initial_response: str | None = None) -> bytes:
    if not _KEYWORD.fullmatch(mechanism.replace("_", "-")):
        raise InvalidArgument(f"invalid SASL mechanism {mechanism!r}")
    if initial_response is None:
        return f"AUTH {mechanism}\r\n".encode("ascii")
    return _text_arg(f"AUTH {mechanism}", initial_response or "=")


def line(text: str) -> bytes:
    if not text.isascii() or _CONTROL.search(text.replace(" ", "x")):
        raise InvalidArgument("invalid continuation line")
    return f"{text}\r\n".encode("ascii")
