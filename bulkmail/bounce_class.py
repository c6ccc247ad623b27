"""Bounce classes: what a failure reply says about the recipient and the sender.

A reply is reduced to one of a few classes (:data:`CLASSES`) so a sender can act
on it -- suppress a dead address, slow down for a provider that said so, fix an
authentication record -- without reading thousands of provider texts.  The
classes follow the categories KumoMTA and others use, merged where the action
is the same.

Rules are tried in order, the first match wins:

1. the user's rules (a TOML file, :func:`load_rules`), so a site can override;
2. built-in rules on well-known provider texts (Gmail, Microsoft, Yahoo, ...),
   which say more than their often generic enhanced codes;
3. the enhanced status code (RFC 3463 and the IANA registry);
4. the basic reply code (RFC 5321).

Pure functions, no I/O besides :func:`load_rules`.  Classifying is cached per
distinct reply: a transaction's recipients share one reply object, and a run
sees few distinct replies.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .protocol.replies import Reply
from .reply_match import PatternError, ReplyPattern

__all__ = [
    "CLASSES", "DEFAULT_SUPPRESS", "BounceClassifier", "ClassRule", "RulesError",
    "classify", "classify_diagnostic", "classify_reply", "default_classifier", "load_rules",
    "parse_classes", "set_default_classifier",
]

#: every class a reply can get, with what it means
CLASSES: dict[str, str] = {
    "invalid-recipient": "the mailbox does not exist (user unknown, bad address syntax)",
    "bad-domain": "the recipient's domain does not exist or accepts no mail (null MX)",
    "inactive-mailbox": "the mailbox exists but is disabled, expired or moved",
    "mailbox-full": "the mailbox is over its storage quota",
    "message-too-large": "the message exceeds a size limit",
    "spam-block": "the sending IP or domain is blocked for its reputation (blocklists)",
    "content-rejected": "the content was refused (spam-like, virus, attachment, malformed)",
    "authentication": "the sender's SPF/DKIM/DMARC/PTR or SMTP AUTH failed",
    "policy": "a local policy refuses this sender or message (relaying, allowlists, ...)",
    "rate-limited": "the receiver asks the sender to slow down (rate, volume, complaints)",
    "dns-failure": "a DNS lookup or route to the destination failed",
    "tls-failure": "TLS is required or failed",
    "protocol-error": "an SMTP command or its syntax was refused",
    "expired": "the message stayed queued past its lifetime (asynchronous bounces)",
    "transient": "a temporary problem at the receiver (busy, system error)",
    "unclassified": "no rule matched",
}

#: classes that mean "this address will never take mail": suppressed automatically
DEFAULT_SUPPRESS = frozenset({"invalid-recipient", "bad-domain", "inactive-mailbox"})


class RulesError(ValueError):
    """A rules file that cannot be used (the message names the file and the rule)."""


@dataclass(frozen=True, slots=True)
class ClassRule:
    """A reply pattern and the class it assigns."""

    bounce_class: str
    pattern: ReplyPattern


def _rule(bounce_class: str, text: str, code: str | None = None) -> ClassRule:
    return ClassRule(bounce_class, ReplyPattern.compile(code=code, text=text))


# Built-in text rules.  The order matters: the more specific cause first (a
# "blocked" message *because of its content* is content-rejected, not a
# spam-block).  Sources: the providers' published error pages, RFC 3463.
@functools.cache
def _builtin() -> tuple[ClassRule, ...]:
    """The built-in rules, compiled when a classifier first needs them, not
    at import: compiling their regexes took 9-13 ms of CPU at every CLI
    start, and a run whose replies are all positive classifies none."""
    return (
        # sender authentication (Gmail 4.7.26-5.7.40, Microsoft 5.7.509/5.7.515, Yahoo)
        _rule("authentication",
              r"\b(SPF|DKIM|DMARC|ARC)\b.{0,80}\b(fail|pass|record|polic|alignment|violation|"
              r"authenticat|validat|signature)|unauthenticated (e-?mail|sender|message)|"
              r"sender is unauthenticated|not aligned with|\bPTR record|reverse DNS|"
              r"does not pass DMARC|failed? (DMARC|DKIM|SPF)|Sender Policy Framework|"
              r"authentication (required|failed|credentials)|username and password not accepted|"
              r"application-specific password|log ?in (through|with) your web browser|"
              r"unrecognized authentication type|XOAUTH|invalid credentials|"
              r"SenderNotAuthenticated|AuthRequired|cannot authenticate|not authenticated|"
              r"(not|n't) aligned"),
        # the sender's own address is refused (before the recipient rules read "address")
        _rule("policy", r"sender('s)? (address|mailbox|system address)|no SMTP service"),
        # mail loops (before sizes: "message exceeded 50 hops")
        _rule("policy", r"\bloop\b|\bhops\b|hop count"),
        # SMTP syntax and sequence (before TLS: "no commands allowed to pipeline after STARTTLS")
        _rule("protocol-error",
              r"syntax error|bad sequence|out of sequence|unrecognized command|"
              r"command not (implemented|recognized)|unimplemented|pipelin|protocol violation|"
              r"HELO/EHLO|EHLO/HELO|(HELO|EHLO) (first|argument)|line length|invalid command|"
              r"RFC ?(2821|3030)|BDAT|per transaction|unauthenticated commands|identity changes"),
        # the mailbox is gone or disabled
        _rule("inactive-mailbox",
              r"\b(inactive|disabled|deactivated|suspended|expired|closed|locked|blocked) "
              r"(mail ?box|account|user|recipient|e-?mail account)|"
              r"(mail ?box|account|user|recipient) (is |has been )?(inactive|disabled|deactivated|"
              r"suspended|expired|closed|locked|no longer (active|available|in use|valid))|"
              r"account that you tried to reach is (inactive|disabled)|DisabledUser|"
              r"account (has been )?(terminated|discontinued)|user (has )?moved|mailbox has moved|"
              r"no longer (accepts|receives|accepting) (e-?mail|mail|messages)"),
        # the mailbox is full (before "does not exist": "mailbox full" texts are unambiguous)
        _rule("mailbox-full",
              r"over (its |the |their )?(storage )?quota|quota (exceeded|full)|"
              r"(mail ?box|inbox|mail ?folder|account|disk) (is |was )?(full|over ?quota|"
              r"out of (storage|space))|out of storage space|insufficient (disk |storage )?space|"
              r"exceeded (its |the )?(storage|mailbox) (allocation|limit|size)|QuotaExceeded|"
              r"mailbox size limit|user.{0,20}over.{0,10}quota|would exceed"),
        # the address does not exist (or is not an address)
        _rule("invalid-recipient",
              r"(user|mail ?box|recipient|address|account|addressee)( name)? "
              r"(is )?(unknown|not found|does not exist|doesn'?t exist|not exist|invalid|"
              r"not valid|rejected|nonexistent|non-existent)|"
              r"(no such|unknown|invalid|bad|non-?existent) (user|mail ?box|recipient|address|"
              r"account|local part|destination mailbox)|"
              r"account that you tried to reach does not exist|RecipNotFound|RecipientNotFound|"
              r"doesn'?t have an? \S+ account|"
              r"not (a )?valid (RFC ?5321 )?(recipient|address|mailbox)|"
              r"no mailbox here|not our customer|undeliverable address|"
              r"recipient address rejected: (access denied|user unknown|undeliverable)|"
              r"mailbox name not allowed|no such person|this user doesn'?t have|"
              r"not listed in (the )?(domino directory|directory|address book)|"
              r"unrouteable address|unrouteable mail domain|address lookup failed"),
        # the domain does not exist
        _rule("bad-domain",
              r"(domain|host) (name )?(not found|does not exist|doesn'?t exist)|"
              r"(unable|not able|weren'?t able) to find the recipient domain|"
              r"null MX|(domain|host) does not accept (e-?)?mail|no (MX|mail exchanger)|"
              r"Host or domain name not found.{0,40}NXDOMAIN|bad destination system"),
        # message size
        _rule("message-too-large",
              r"(message|mail|e-?mail) (size|length)? ?(exceeds|exceeded|too (large|big|long))|"
              r"(size|length) (of your message )?(exceeds|exceeded)|too (large|big)|"
              r"(exceeds|exceeded) .{0,30}(size|header) (limit|restrictions)|message size|"
              r"header size limit|attachments? .{0,40}exceeds|exceeds .{0,30} limit of"),
        # TLS
        _rule("tls-failure",
              r"\bTLS\b|STARTTLS|\bSSL\b|encryption (needed|required)|certificate|handshake"),
        # provider asks to slow down (any code)
        _rule("rate-limited",
              r"rate.?limit|too (many|much) (connections|messages|mail|e-?mail|recipients from|"
              r"login attempts|concurrent)|receiving (e-?mail|mail) (too quickly|at a rate)|"
              r"(sending|relay) limit|throttl|too fast|slow down|too many recipients|"
              r"(hourly|daily|per hour|per day|receive|recipient) .{0,30}limit|per connection|"
              r"exceeded .{0,30}quota for sending|connection (rate|frequency) limit|"
              r"try again later.{0,30}(volume|rate)|Too many (sessions|requests)"),
        # temporary deferrals that only say "not now": the provider's signal to slow down
        _rule("rate-limited", r"(?<!permanently )deferred|unusual (traffic|rate|amount)|"
              r"unexpected volume|greylist|graylist|complaints", code="4.."),
        # content of the message (before spam-block: "blocked because of content")
        _rule("content-rejected",
              r"\bcontent\b|virus|malware|phish|attachment|file type|\bURL\b|links within|"
              r"malformed|RFC ?5322|not RFC|Message-ID|From: header|headers?\b.{0,20}(invalid|"
              r"duplicate|malformed)|looks like spam|identified as spam|classified as spam|"
              r"detected as spam|message (was |is )?(considered|scored as|marked as|rejected as)"
              r" spam|spam score|bulk mail|\bPH0[0-9]\b|\bHM08\b|MIME|security issue|bare linefeed|"
              r"unicode character|encoded-word|8-?bit|line too long"),
        # reputation of the source: blocklists and spam blocks
        _rule("spam-block",
              r"spamhaus|spamcop|barracuda|sorbs|blocklist|block ?list|blacklist|black list|"
              r"\bRBL\b|DNSBL|blocked using|listed (at|in|on|by)|banned|reputation|"
              r"\bspam\b|unsolicited|junk|abuse|\bS3140\b|traffic not accepted|"
              r"poor reputation|permanently deferred|(ip|host|address|network) "
              r"(is |has been )?(blocked|blacklisted|listed)|"
              r"refused to talk|not accepted from this ip|complaints|\bRP[0-9]\b|\bDYN\b|"
              r"dynamic ip|residential|dial-?up|envelope blocked|bad outbound sender|"
              r"send (e-?mail )?directly|block(ed)? (by|due to)"),
        # a weak signal, so late: "mailbox unavailable" may come with a blocklist reason
        _rule("invalid-recipient", r"mail ?box unavailable", code="5.."),
        # relaying, allowlists, local policy
        _rule("policy",
              r"rcpthosts|relay|not permitted|not allowed|prohibit|polic|allowlist|whitelist|"
              r"access denied|not authori[sz]ed|restricted|forwarding|moderator|"
              r"only accepts? (e-?)?mail from|sender (address )?rejected|rejected by recipient"),
        # DNS, routing
        _rule("dns-failure",
              r"\bDNS\b|name service|resolv|lookup (failed|error)|host not found|"
              r"temporary failure in name|SERVFAIL|MX (lookup|record)|no route|routing|"
              r"unroutable|Unable to route"),
        # temporary trouble at the receiver
        _rule("transient",
              r"try again|temporar|busy|resources|system (problem|error)|timeout|timed out|"
              r"server error|unavailable|local error|insufficient system|deferr|congest",
              code="4.."),
        _rule("expired", r"(message|delivery time|delivery) expired|retry timeout exceeded|"
              r"lifetime|too long in (the )?queue|could not be delivered within"),
    )

# RFC 3463 / IANA "subject.detail" -> class, for either class (4 or 5)
_BY_ENHANCED: dict[str, str] = {
    "1.0": "invalid-recipient", "1.1": "invalid-recipient", "1.2": "bad-domain",
    "1.3": "invalid-recipient", "1.4": "invalid-recipient", "1.6": "inactive-mailbox",
    "1.7": "policy", "1.8": "policy", "1.9": "policy", "1.10": "bad-domain",
    "2.0": "inactive-mailbox", "2.1": "inactive-mailbox", "2.2": "mailbox-full",
    "2.3": "message-too-large", "2.4": "policy",
    "3.0": "transient", "3.1": "transient", "3.2": "transient", "3.3": "protocol-error",
    "3.4": "message-too-large", "3.5": "transient",
    "4.0": "transient", "4.1": "transient", "4.2": "transient", "4.3": "dns-failure",
    "4.4": "dns-failure", "4.5": "transient", "4.6": "policy", "4.7": "expired",
    "5.0": "protocol-error", "5.1": "protocol-error", "5.2": "protocol-error",
    "5.3": "protocol-error", "5.4": "protocol-error", "5.5": "protocol-error",
    "5.6": "protocol-error",
    "6.0": "content-rejected", "6.1": "content-rejected", "6.2": "content-rejected",
    "6.3": "content-rejected", "6.4": "content-rejected", "6.5": "content-rejected",
    "6.6": "content-rejected", "6.7": "content-rejected", "6.8": "content-rejected",
    "6.9": "content-rejected", "6.10": "content-rejected",
    "7.0": "policy", "7.1": "policy", "7.2": "policy", "7.3": "policy", "7.4": "policy",
    "7.5": "policy", "7.6": "policy", "7.7": "policy", "7.8": "authentication",
    "7.9": "authentication", "7.10": "tls-failure", "7.11": "tls-failure",
    "7.12": "authentication", "7.13": "inactive-mailbox", "7.14": "authentication",
    "7.15": "policy", "7.16": "message-too-large", "7.17": "inactive-mailbox",
    "7.18": "inactive-mailbox", "7.19": "policy", "7.20": "authentication",
    "7.21": "authentication", "7.22": "authentication", "7.23": "authentication",
    "7.24": "authentication", "7.25": "authentication", "7.26": "authentication",
    "7.27": "authentication", "7.28": "spam-block", "7.29": "authentication",
    "7.30": "tls-failure",
}
# where a temporary code means something else than its permanent twin
_BY_ENHANCED_TRANSIENT: dict[str, str] = {"7.28": "rate-limited", "7.0": "transient",
                                          "7.1": "transient", "2.0": "transient",
                                          "1.0": "transient"}

# a detail the registry does not define (Microsoft's 5.7.606, 5.2.121, ...): its subject
_BY_SUBJECT: dict[str, str] = {
    "1": "invalid-recipient", "2": "inactive-mailbox", "3": "transient", "4": "transient",
    "5": "protocol-error", "6": "content-rejected", "7": "policy",
}

# RFC 5321 §4.2.3 basic codes, when nothing else said more
_BY_CODE: dict[int, str] = {
    421: "transient", 450: "transient", 451: "transient", 452: "transient",
    454: "tls-failure", 455: "protocol-error",
    500: "protocol-error", 501: "protocol-error", 502: "protocol-error",
    503: "protocol-error", 504: "protocol-error", 555: "protocol-error",
    521: "bad-domain", 556: "bad-domain",
    530: "authentication", 534: "authentication", 535: "authentication",
    551: "invalid-recipient", 552: "mailbox-full", 553: "invalid-recipient",
}

#: distinct replies remembered per classifier (cleared when full)
CACHE_SIZE = 4096


class BounceClassifier:
    """User rules, then the built-ins; answers cached per distinct reply."""

    def __init__(self, rules: Sequence[ClassRule] = ()) -> None:
        self._user = tuple(rules)
        self._rules: tuple[ClassRule, ...] | None = None
        self._cache: dict[tuple[int, str | None, str], str] = {}
        self._last: Reply | None = None
        self._last_class: str | None = None

    @property
    def rules(self) -> tuple[ClassRule, ...]:
        """The user's rules, then the built-ins (compiled at first use)."""
        if self._rules is None:
            self._rules = (*self._user, *_builtin())
        return self._rules

    def classify(self, code: int, enhanced: str | None, text: str) -> str:
        key = (code, enhanced, text)
        found = self._cache.get(key)
        if found is None:
            found = self._classify(code, enhanced, text)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found

    def classify_reply(self, reply: Reply | None) -> str | None:
        """The class of a failure reply; ``None`` for no reply or a positive one."""
        if reply is None or reply.is_positive:
            return None
        if reply is self._last:  # one transaction's results share the reply object
            return self._last_class
        found = self.classify(reply.code, reply.enhanced, reply.text)
        self._last, self._last_class = reply, found
        return found

    def _classify(self, code: int, enhanced: str | None, text: str) -> str:
        for rule in self.rules:
            if rule.pattern.matches(code, enhanced, text):
                return rule.bounce_class
        if enhanced:
            klass, _, rest = enhanced.partition(".")
            if klass == "4" and rest in _BY_ENHANCED_TRANSIENT:
                return _BY_ENHANCED_TRANSIENT[rest]
            if rest in _BY_ENHANCED:
                return _BY_ENHANCED[rest]
            if klass in "45" and rest.partition(".")[0] in _BY_SUBJECT:
                return _BY_SUBJECT[rest.partition(".")[0]]
        if code in _BY_CODE:
            return _BY_CODE[code]
        return "transient" if 400 <= code < 500 else "unclassified"


def parse_classes(spec: str) -> frozenset[str]:
    """``"invalid-recipient,bad-domain"`` -> the set, every name checked."""
    names = frozenset(n.strip() for n in spec.split(",") if n.strip())
    unknown = sorted(names - set(CLASSES))
    if unknown:
        raise RulesError(f"unknown bounce class(es) {', '.join(unknown)}; "
                         f"known: {', '.join(CLASSES)}")
    return names


def load_rules(path: str | Path) -> list[ClassRule]:
    """The ``[[rule]]`` tables of a TOML file, in order::

        [[rule]]
        class = "rate-limited"
        code = "421"               # optional, full match
        enhanced = '4\\.7\\.0'      # optional, full match
        text = '\\[TSS04\\]'        # optional, searched, case-insensitive
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RulesError(f"rules file {path} is not valid TOML: {exc}") from exc
    tables = data.get("rule", [])
    unknown = sorted(set(data) - {"rule"})
    if unknown or not isinstance(tables, list):
        raise RulesError(f"rules file {path}: expected only [[rule]] tables, got {unknown}")
    rules = []
    for n, table in enumerate(tables, 1):
        where = f"rules file {path}, rule {n}"
        bounce_class = table.get("class")
        if bounce_class not in CLASSES:
            known = ", ".join(CLASSES)
            raise RulesError(f"{where}: class {bounce_class!r} is not one of: {known}")
        extra = sorted(set(table) - {"class", "code", "enhanced", "text"})
        if extra:
            raise RulesError(f"{where}: unknown key(s) {', '.join(extra)}")
        try:
            pattern = ReplyPattern.from_table(table)
        except PatternError as exc:
            raise RulesError(f"{where}: {exc}") from exc
        rules.append(ClassRule(bounce_class, pattern))
    return rules


_default = BounceClassifier()


def default_classifier() -> BounceClassifier:
    """The classifier :attr:`Result.bounce_class` and the report use."""
    return _default


def set_default_classifier(classifier: BounceClassifier) -> None:
    """Install user rules process-wide (``--bounce-rules``): the report's column follows."""
    global _default
    _default = classifier


def classify(code: int, enhanced: str | None, text: str) -> str:
    return _default.classify(code, enhanced, text)


def classify_reply(reply: Reply | None) -> str | None:
    return _default.classify_reply(reply)


_DIAGNOSTIC_LEAD = re.compile(r"\s*(?:[245]\d\d[ -])?\s*(?:[245]\.\d{1,3}\.\d{1,3}\s)?\s*")


def classify_diagnostic(code: int, status: str | None, diagnostic: str | None) -> str:
    """The class of a DSN's per-recipient report (RFC 3464): its ``Status`` field
    and the text of its ``Diagnostic-Code`` (``smtp; 550 5.1.1 ...``)."""
    text = ""
    if diagnostic:
        kind, semi, rest = diagnostic.partition(";")
        text = rest if semi and " " not in kind.strip() else diagnostic
        text = " ".join(_DIAGNOSTIC_LEAD.sub("", text, count=1).split())
    return _default.classify(code, status, text)
