"""Command encoding and envelope address validation (RFC 5321 §4.1, RFC 6531).

The invariant: whatever the caller passes, a function either returns exactly
one CRLF-terminated line or raises before any bytes exist."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol import commands
from bulkmail.protocol.errors import InvalidAddress, InvalidArgument, LocalProtocolError


def one_line(wire: bytes) -> bytes:
    """The command without its CRLF, asserting there is exactly one line end."""
    assert wire.endswith(b"\r\n")
    assert wire.count(b"\r") == 1 and wire.count(b"\n") == 1
    return wire[:-2]


# -- injection: nothing forbidden is ever encoded -----------------------------------

INJECTIONS = [
    "a@b.com\r\nRCPT TO:<evil@x.test>",
    "a@b.com\nRCPT TO:<evil@x.test>",
    "a@b.com\rRCPT TO:<evil@x.test>",
    "a@b.com\r\n",
    "a@b.com\n",
    "a\x00@b.com",
    "a@b.com\x00",
    "a\tb@b.com",
    "a\x7f@b.com",
    "a\x1b@b.com",
    "a\x85@b.com",  # NEL, a C1 control
    "a@b\x9f.com",
    "a<b@b.com",
    "a>b@b.com",
    "a@b.com>",
    "<a@b.com>",
    "a@b.com> SIZE=1",
    "a b@b.com",
    "a@b .com",
    "a\u00a0b@b.com",  # no-break space
    "a\u2028b@b.com",  # line separator
    '"a\r\nb"@b.com',
    '"a\tb"@b.com',
    '"a<b"@b.com',
    "a@[1.2.3.4]\r\nQUIT",
]


@pytest.mark.parametrize("address", INJECTIONS)
def test_injection_attempts_raise_and_encode_nothing(address: str) -> None:
    for smtputf8 in (False, True):
        with pytest.raises(InvalidAddress):
            commands.validate_address(address, smtputf8=smtputf8)
        with pytest.raises(InvalidAddress):
            commands.rcpt_to(address, smtputf8=smtputf8)
        with pytest.raises(InvalidAddress):
            commands.mail_from(address, smtputf8=smtputf8)


@pytest.mark.parametrize(
    "address, reason",
    [
        ("a@b.com\r\nRCPT TO:<e@x>", "control character U+000D in address"),
        ("a\x00@b.com", "control character U+0000 in address"),
        ("a\tb@b.com", "control character U+0009 in address"),
        ("a\x7f@b.com", "control character U+007F in address"),
        ("a<b@b.com", "angle bracket in address"),
        ("a b@b.com", "whitespace in address"),
    ],
)
def test_injection_reasons_are_short_and_name_the_character(address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        commands.validate_address(address)
    assert info.value.reason == reason
    assert info.value.address == address
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from("ab.@-\"\\ <>[]:\r\n\t\x00\x7f\x85\u00a0ü"), max_size=30
    ),
    st.booleans(),
)
def test_any_address_yields_one_clean_line_or_invalid_address(
    address: str, smtputf8: bool
) -> None:
    try:
        wire = commands.rcpt_to(address, smtputf8=smtputf8)
    except InvalidAddress:
        return
    path = one_line(wire)[len(b"RCPT TO:<") : -1]
    assert not re.search(rb"[\x00-\x1f\x7f<>]", path)
    assert b"\xc2\x85" not in path and b"\xc2\xa0" not in path
    assert smtputf8 or path.isascii()


# -- address rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "user@example.com",
        "User.Name+tag@Example.COM",  # nothing is lower-cased
        "a!#$%&'*+/=?^_`{|}~-@example.com",
        "x@y",
        "user@sub-domain.example-host.com",
        "a..b@docomo.example",  # dot-string violations exist in the wild
        ".a.@example.com",
        "u@[192.0.2.1]",
        "u@[IPv6:2001:db8::1]",
        "u@[ipv6:::1]",
        '"a b"@example.com',
        '"a\\"b"@example.com',
        '"a@b"@example.com',  # split at the last @
        '""@example.com',
        "u@" + "a" * 63 + ".example",
    ],
)
def test_valid_addresses_pass_unchanged(address: str) -> None:
    assert commands.validate_address(address) == address
    assert commands.rcpt_to(address) == b"RCPT TO:<" + address.encode() + b">\r\n"


@pytest.mark.parametrize(
    "address, reason",
    [
        ("no-at-sign", "missing @"),
        ("", "missing @"),
        ("@example.com", "empty local part"),
        ("u@", "empty domain"),
        ("u@-bad.com", "malformed domain"),
        ("u@bad-.com", "malformed domain"),
        ("u@a..b", "malformed domain"),
        ("u@.example.com", "malformed domain"),
        ("u@example.com.", "malformed domain"),
        ("u@exa_mple.com", "malformed domain"),
        ("u@" + "a" * 64 + ".example", "malformed domain"),
        ("u@[300.1.1.1]", "bad address literal"),
        ("u@[1.2.3]", "bad address literal"),
        ("u@[IPv6:2001:db8::g]", "bad address literal"),
        ("u@[IPv6:fe80::1%eth0]", "bad address literal"),
        ("u@[1.2.3.4", "bad address literal"),
        ("u@[tag:content]", "bad address literal"),
        ('"unbalanced@example.com', "unbalanced quotes in local part"),
        ('a"b@example.com', "unbalanced quotes in local part"),
        ('"a"b"@example.com', "unbalanced quotes in local part"),
        ('"a\\"@example.com', "unbalanced quotes in local part"),
        ('"@example.com', "unbalanced quotes in local part"),
        ("a@b@example.com", "character '@' not allowed unquoted in local part"),
        ("a,b@example.com", "character ',' not allowed unquoted in local part"),
        ("a(b)@example.com", "character '(' not allowed unquoted in local part"),
    ],
)
def test_invalid_addresses_name_the_rule(address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        commands.validate_address(address)
    assert info.value.reason == reason


def test_local_part_length_is_64_octets() -> None:
    assert commands.validate_address("x" * 64 + "@example.com")
    with pytest.raises(InvalidAddress, match="local part longer than 64 octets"):
        commands.validate_address("x" * 65 + "@example.com")
    # octets, not characters: 32 two-octet characters fit, 33 do not
    assert commands.validate_address("é" * 32 + "@example.com", smtputf8=True)
    with pytest.raises(InvalidAddress, match="64 octets"):
        commands.validate_address("é" * 33 + "@example.com", smtputf8=True)


def domain_of_length(n: int) -> str:
    """A syntactically valid domain of exactly ``n`` octets."""
    labels, left = [], n
    while left > 0:
        size = min(63, left)
        if left - size == 1:  # avoid a trailing empty label
            size -= 1
        labels.append("a" * size)
        left -= size + 1
    domain = ".".join(labels)
    assert len(domain) == n
    return domain


def test_domain_length_is_255_octets_and_path_254() -> None:
    with pytest.raises(InvalidAddress, match="domain longer than 255 octets"):
        commands.validate_address("u@" + domain_of_length(256))
    # a 255-octet domain is a valid domain, but the path would exceed 254
    with pytest.raises(InvalidAddress, match="address longer than 254 octets"):
        commands.validate_address("u@" + domain_of_length(255))
    assert commands.validate_address("u@" + domain_of_length(252))
    with pytest.raises(InvalidAddress, match="address longer than 254 octets"):
        commands.validate_address("uu@" + domain_of_length(252))
    assert commands.validate_address("x" * 64 + "@" + domain_of_length(189))
    with pytest.raises(InvalidAddress, match="address longer than 254 octets"):
        commands.validate_address("x" * 64 + "@" + domain_of_length(190))


def test_non_ascii_local_part_needs_smtputf8() -> None:
    with pytest.raises(InvalidAddress) as info:
        commands.validate_address("jörg@example.com")
    assert info.value.reason == "non-ASCII local part needs SMTPUTF8"
    with pytest.raises(InvalidAddress, match="needs SMTPUTF8"):
        commands.rcpt_to("用户@例子.example")
    with pytest.raises(InvalidAddress, match="needs SMTPUTF8"):
        commands.validate_address('"jö rg"@example.com')
    assert commands.validate_address("jörg@example.com", smtputf8=True) == "jörg@example.com"
    assert commands.rcpt_to("jörg@example.com", smtputf8=True) == (
        "RCPT TO:<jörg@example.com>\r\n".encode()
    )


def test_non_ascii_local_part_goes_out_as_given() -> None:
    decomposed = "jo\u0308rg@example.com"  # not NFC: the mailbox belongs to the server
    assert commands.validate_address(decomposed, smtputf8=True) == decomposed


def test_idn_domain_becomes_a_label_without_smtputf8_and_is_kept_with_it() -> None:
    assert commands.validate_address("user@bücher.example") == "user@xn--bcher-kva.example"
    assert commands.rcpt_to("user@bücher.example") == b"RCPT TO:<user@xn--bcher-kva.example>\r\n"
    assert commands.validate_address("user@bücher.example", smtputf8=True) == (
        "user@bücher.example"
    )
    decomposed = "user@bu\u0308cher.example"
    assert commands.validate_address(decomposed, smtputf8=True) == "user@bücher.example"
    assert commands.validate_address(decomposed) == "user@xn--bcher-kva.example"
    # IDNA's ideographic full stop separates labels too
    assert commands.validate_address("user@bücher\u3002example", smtputf8=True) == (
        "user@bücher.example"
    )


def test_invalid_idn_domain_raises() -> None:
    with pytest.raises(InvalidAddress, match="not a valid internationalised domain name"):
        commands.validate_address("user@" + "ü" * 70 + ".example")
    with pytest.raises(InvalidAddress, match="not a valid internationalised domain name"):
        commands.validate_address("user@bücher..example")


def test_needs_smtputf8_only_for_a_non_ascii_local_part() -> None:
    assert commands.needs_smtputf8("jörg@example.com")
    assert commands.needs_smtputf8("jörg@bücher.example")
    assert not commands.needs_smtputf8("user@bücher.example")
    assert not commands.needs_smtputf8("user@example.com")
    assert not commands.needs_smtputf8("")


def test_validation_is_cached_per_domain_but_errors_keep_their_address() -> None:
    for name in ("one", "two"):
        with pytest.raises(InvalidAddress) as info:
            commands.validate_address(f"{name}@-bad.example")
        assert info.value.address == f"{name}@-bad.example"


def test_invalid_address_is_a_local_protocol_error_and_value_error() -> None:
    with pytest.raises(LocalProtocolError):
        commands.rcpt_to("nope")
    with pytest.raises(ValueError):
        commands.rcpt_to("nope")


# -- command lines --------------------------------------------------------------------


def test_constants_are_single_lines() -> None:
    assert commands.DATA == b"DATA\r\n"
    assert commands.RSET == b"RSET\r\n"
    assert commands.QUIT == b"QUIT\r\n"
    assert commands.STARTTLS == b"STARTTLS\r\n"


def test_ehlo_and_helo() -> None:
    assert commands.ehlo("client.sender.com") == b"EHLO client.sender.com\r\n"
    assert commands.helo("h") == b"HELO h\r\n"
    assert commands.ehlo("[127.0.0.1]") == b"EHLO [127.0.0.1]\r\n"
    assert commands.ehlo("odd_host.local") == b"EHLO odd_host.local\r\n"


@pytest.mark.parametrize("name", ["", "bad\r\nname", "host\x00", "two words", "tab\t", "hôte"])
def test_bad_ehlo_names_raise(name: str) -> None:
    with pytest.raises(InvalidArgument):
        commands.ehlo(name)
    with pytest.raises(InvalidArgument):
        commands.helo(name)


def test_mail_from_null_reverse_path_and_parameters() -> None:
    assert commands.mail_from("") == b"MAIL FROM:<>\r\n"
    assert commands.mail_from("", size=10) == b"MAIL FROM:<> SIZE=10\r\n"
    assert commands.mail_from("alice@sender.com") == b"MAIL FROM:<alice@sender.com>\r\n"
    assert commands.mail_from(
        "a@b.c", size=10, body="8BITMIME", smtputf8=True, params={"RET": "HDRS", "X-FLAG": None}
    ) == b"MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS X-FLAG\r\n"
    assert commands.mail_from("a@b.c", size=0) == b"MAIL FROM:<a@b.c> SIZE=0\r\n"
    for body in ("7BIT", "8BITMIME", "BINARYMIME"):
        wire = f"MAIL FROM:<a@b.c> BODY={body}\r\n".encode()
        assert commands.mail_from("a@b.c", body=body) == wire
    assert commands.mail_from("a@b.c", params={"ENVID": "QQ314159"}) == (
        b"MAIL FROM:<a@b.c> ENVID=QQ314159\r\n"
    )


def test_mail_from_smtputf8_allows_and_announces_utf8() -> None:
    with pytest.raises(InvalidAddress, match="needs SMTPUTF8"):
        commands.mail_from("jörg@example.com")
    assert commands.mail_from("jörg@bücher.example", smtputf8=True) == (
        "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()
    )
    assert commands.mail_from("u@bücher.example") == b"MAIL FROM:<u@xn--bcher-kva.example>\r\n"


def test_rcpt_to_parameters() -> None:
    assert commands.rcpt_to("bob@example.com") == b"RCPT TO:<bob@example.com>\r\n"
    assert commands.rcpt_to("a@b.c", params={"NOTIFY": "SUCCESS,FAILURE"}) == (
        b"RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE\r\n"
    )
    assert commands.rcpt_to("a@b.c", params={"ORCPT": "rfc822;a+2Bb@b.c"}) == (
        b"RCPT TO:<a@b.c> ORCPT=rfc822;a+2Bb@b.c\r\n"
    )


BAD_ARGUMENTS: list[Callable[[], bytes]] = [
    lambda: commands.mail_from("a@b.c", params={"BAD KEY": "v"}),
    lambda: commands.mail_from("a@b.c", params={"-LEAD": "v"}),
    lambda: commands.mail_from("a@b.c", params={"": "v"}),
    lambda: commands.mail_from("a@b.c", params={"K\r\nRSET": None}),
    lambda: commands.mail_from("a@b.c", params={"K": "v=1"}),
    lambda: commands.mail_from("a@b.c", params={"K": "a b"}),
    lambda: commands.mail_from("a@b.c", params={"K": ""}),
    lambda: commands.mail_from("a@b.c", params={"K": "v\r\nRCPT TO:<x@y>"}),
    lambda: commands.mail_from("a@b.c", params={"K": "v\x00"}),
    lambda: commands.mail_from("a@b.c", params={"K": "café"}),
    lambda: commands.mail_from("a@b.c", size=1, params={"size": "2"}),
    lambda: commands.mail_from("a@b.c", smtputf8=True, params={"SMTPUTF8": None}),
    lambda: commands.mail_from("a@b.c", body="9BIT"),
    lambda: commands.mail_from("a@b.c", body="8bitmime"),
    lambda: commands.mail_from("a@b.c", size=-1),
    lambda: commands.rcpt_to("a@b.c", params={"NOTIFY": "NEVER\r\nDATA"}),
    lambda: commands.noop("x\r\ny"),
    lambda: commands.vrfy("x\ry"),
    lambda: commands.vrfy(""),
    lambda: commands.expn("list\n"),
    lambda: commands.expn("lïst"),
    lambda: commands.bdat(-1, last=True),
    lambda: commands.auth("PLAIN\r\n"),
    lambda: commands.auth("BAD MECH"),
    lambda: commands.auth(""),
    lambda: commands.auth("PLAIN", "abc\r\nQUIT"),
    lambda: commands.auth("PLAIN", "not base64"),
    lambda: commands.line("abc\n"),
    lambda: commands.line("abc\r"),
    lambda: commands.line("\x00"),
    lambda: commands.line("café"),
]


@pytest.mark.parametrize("call", BAD_ARGUMENTS)
def test_bad_arguments_raise_before_encoding(call: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidArgument):
        call()


def test_noop_vrfy_expn() -> None:
    assert commands.noop() == b"NOOP\r\n"
    assert commands.noop("ping") == b"NOOP ping\r\n"
    assert commands.vrfy("postmaster") == b"VRFY postmaster\r\n"
    assert commands.vrfy("<postmaster@example.com>") == b"VRFY <postmaster@example.com>\r\n"
    assert commands.expn("staff list") == b"EXPN staff list\r\n"


def test_bdat() -> None:
    assert commands.bdat(123, last=True) == b"BDAT 123 LAST\r\n"
    assert commands.bdat(0, last=True) == b"BDAT 0 LAST\r\n"
    assert commands.bdat(1 << 20, last=False) == b"BDAT 1048576\r\n"


def test_auth_and_the_empty_initial_response() -> None:
    assert commands.auth("LOGIN") == b"AUTH LOGIN\r\n"
    assert commands.auth("PLAIN", "dXNlcm5hbWUAdXNlcm5hbWUAcGFzc3dvcmQ=") == (
        b"AUTH PLAIN dXNlcm5hbWUAdXNlcm5hbWUAcGFzc3dvcmQ=\r\n"
    )
    # RFC 4954 §4: "=" is an empty initial response, distinct from none at all
    assert commands.auth("PLAIN", "") == b"AUTH PLAIN =\r\n"
    assert commands.auth("CRAM-MD5") == b"AUTH CRAM-MD5\r\n"
    assert commands.auth("SCRAM-SHA-256", "biwsbj11c2VyLHI9") == (
        b"AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9\r\n"
    )


def test_bare_continuation_lines() -> None:
    assert commands.line("dGlt") == b"dGlt\r\n"
    assert commands.line("") == b"\r\n"  # an empty SASL response
    assert commands.line("*") == b"*\r\n"  # cancels an exchange (RFC 4954 §4)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_any_text_argument_is_one_line_or_invalid_argument(text: str) -> None:
    for encode in (commands.vrfy, commands.expn, commands.noop, commands.ehlo, commands.line):
        try:
            wire = encode(text)
        except InvalidArgument:
            continue
        one_line(wire)
        assert wire.isascii()


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from("aZ09.-_+@\"\\ ü[]:"), min_size=1, max_size=40))
def test_the_engines_fast_path_agrees_with_validate_address(address: str) -> None:
    _, at, domain = address.rpartition("@")
    if not (at and commands.is_plain(address, domain)):
        return  # validate_address gives the verdict (and the reason)
    assert commands.validate_address(address, smtputf8=True) == address
    assert commands.validate_address(address) == address


@pytest.mark.parametrize("address", [
    "a@b", "a@b.", "a@.b", "a@b..c", "@b.c", "a@", "a@-b.c", "a@b-.c", "x" * 65 + "@b.c",
    "a@" + "b" * 64 + ".c", "a@" + ".".join(["b" * 60] * 5), '"q"@b.c', "ü@b.c", "a@[1.2.3.4]",
])
def test_the_fast_path_never_accepts_what_validation_refuses(address: str) -> None:
    try:
        commands.validate_address(address)
    except InvalidAddress:
        assert not commands.is_plain(address, address.rpartition("@")[2])


@given(st.one_of(
    st.text(alphabet=st.sampled_from("aZ09.-_ ü[]\n"), min_size=0, max_size=12),
    st.lists(st.text(alphabet="ab-", min_size=0, max_size=64), min_size=1, max_size=6)
    .map(".".join),
))
@settings(max_examples=2000)
def test_is_plain_domain_is_what_domain_validation_accepts_of_a_plain_name(
    domain: str,
) -> None:
    # intake's one-match test per domain agrees with the full validation
    # (labels of letters, digits and inner hyphens, 63 each, 253 in all)
    full = re.fullmatch(r"[A-Za-z0-9.-]{1,253}", domain) is not None \
        and commands._domain_wire(domain, False)[0] is not None
    assert commands.is_plain_domain(domain) == full
