"""Bounce classes: agreement with a labelled set of real replies, rules files, caching."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from bulkmail import bounce_class
from bulkmail.bounce_class import (
    CLASSES,
    BounceClassifier,
    RulesError,
    classify,
    load_rules,
)
from bulkmail.protocol.replies import Reply, parse_enhanced
from bulkmail.results import Result, Status

DATA = Path(__file__).parent / "data" / "replies_labelled.tsv"
#: the floor the README quotes; the measured agreement is printed by the test
AGREEMENT_FLOOR = 0.95


def labelled() -> list[tuple[int, str | None, str, str, str]]:
    rows = []
    with DATA.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if not row or row[0].startswith("#"):
                continue
            code, enhanced, text, label, source = row
            rows.append((int(code), enhanced or None, text, label, source))
    return rows


def test_labelled_set_is_large_sourced_and_uses_known_classes() -> None:
    rows = labelled()
    assert len(rows) >= 200
    for _code, _enhanced, _text, label, source in rows:
        assert label in CLASSES
        assert source.startswith(("https://", "http://"))


def test_classification_agrees_with_the_labelled_set() -> None:
    rows = labelled()
    wrong = [
        (code, enhanced, text, label, got)
        for code, enhanced, text, label, _ in rows
        if (got := classify(code, enhanced, text)) != label
    ]
    agreement = 1 - len(wrong) / len(rows)
    print(f"agreement {agreement:.1%} on {len(rows)} replies")
    for w in wrong:
        print("MISMATCH", w)
    assert agreement >= AGREEMENT_FLOOR, wrong


def test_user_rules_come_before_the_built_ins(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nclass = "transient"\ncode = "550"\ntext = "blocked using"\n'
        '[[rule]]\nclass = "rate-limited"\nenhanced = \'4\\.7\\.0\'\n',
        encoding="utf-8",
    )
    classifier = BounceClassifier(load_rules(rules))
    # built-in: a blocklist listing; the user says "retry it"
    assert classify(550, "5.7.1", "Client host blocked using zen.spamhaus.org") == "spam-block"
    assert classifier.classify(550, "5.7.1", "Client host blocked using zen") == "transient"
    # the code must match whole: 554 is not the user's 550
    assert classifier.classify(554, "5.7.1", "blocked using zen") == "spam-block"
    assert classifier.classify(421, "4.7.0", "anything at all") == "rate-limited"
    assert classifier.classify(421, "4.7.1", "Server busy") == "transient"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[rule]]\nclass = "hard"\n', "class 'hard' is not one of"),
        ('[[rule]]\nclass = "policy"\ntext = "(unclosed"\n', "'text' is not a valid regular"),
        ('[[rule]]\nclass = "policy"\nbody = "x"\n', "unknown key(s) body"),
        ("[rules]\nx = 1\n", "expected only [[rule]] tables"),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_is_refused_saying_why(
    tmp_path: Path, content: str, message: str
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(content, encoding="utf-8")
    with pytest.raises(RulesError, match=re.escape(message)):
        load_rules(rules)


def test_a_missing_rules_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.toml")


def test_result_class_is_computed_from_the_reply_and_reported() -> None:
    text = "5.1.1 The email account that you tried to reach does not exist."
    reply = Reply(550, (text,), parse_enhanced(550, text))
    bounced = Result("a@example.com", Status.BOUNCED, reply)
    assert bounced.bounce_class == "invalid-recipient"
    assert bounced.as_dict()["class"] == "invalid-recipient"
    delivered = Result("b@example.com", Status.DELIVERED, Reply(250, ("OK",)))
    assert delivered.bounce_class is None
    assert delivered.as_dict()["class"] is None
    assert Result("c@example.com", Status.SUPPRESSED).bounce_class is None


def test_one_transactions_reply_is_classified_once() -> None:
    classifier = BounceClassifier()
    reply = Reply(421, ("4.7.0 [TSS04] Messages temporarily deferred",), "4.7.0")
    assert classifier.classify_reply(reply) == "rate-limited"
    calls = 0
    original = classifier._classify

    def counting(code: int, enhanced: str | None, text: str) -> str:
        nonlocal calls
        calls += 1
        return original(code, enhanced, text)

    classifier._classify = counting  # type: ignore[method-assign]
    for _ in range(1000):
        assert classifier.classify_reply(reply) == "rate-limited"
    # an equal reply that is another object is answered from the cache, too
    assert classifier.classify_reply(Reply(421, reply.lines, "4.7.0")) == "rate-limited"
    assert calls == 0


def test_the_default_classifier_can_carry_user_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nclass = "policy"\ntext = "custom words"\n', encoding="utf-8")
    before = bounce_class.default_classifier()
    try:
        bounce_class.set_default_classifier(BounceClassifier(load_rules(rules)))
        result = Result("a@x.org", Status.BOUNCED, Reply(550, ("custom words",)))
        assert result.bounce_class == "policy"
    finally:
        bounce_class.set_default_classifier(before)


def test_basic_codes_and_unknown_details_fall_back_sensibly() -> None:
    assert classify(550, "5.7.999", "") == "policy"  # unknown detail: its subject
    assert classify(452, None, "") == "transient"
    assert classify(553, None, "") == "invalid-recipient"
    assert classify(599, None, "") == "unclassified"
    assert classify(499, None, "") == "transient"
