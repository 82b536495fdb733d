"""I8: no personal data in any log line; an erased customer leaves no personal data behind.

Ground truth: every log line of every process of the run, scanned independently of the service's own
redaction (other patterns, and the run's actual phone numbers and secrets); the history (which
customers were erased, with their phone and email); the database's personal-data columns. Safeguard:
log redaction (10), and the privacy topics' erasure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checker.result import CheckResult
from chaos.history import OK

ID = "I8"
TITLE = "no PII in any log line; redacted customers leave no PII behind"

# Each pattern starts with a literal, so the regex engine skims a file for it at memory speed; the few
# hits are then confirmed by looking around them. Independent of the service's own redaction patterns.
_PHONE = re.compile(rb"\+\d{10,15}(?!\d)")
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
_BEARER = re.compile(rb"earer\s+(?!\[redacted\])[A-Za-z0-9._~+/-]{8,}")  # after a B or b
# Any domain (international ones too) ending in a name of two letters or more, after a local-part byte:
# every form the contacts validator accepts (`o'brien!x@exämple.co.uk`), not just the common ones.
# (JSON logs write non-ASCII as `\u00e4`: a backslash may stand in a domain too.)
_EMAIL = re.compile(rb"@[A-Za-z0-9\x80-\xff\\-]+(?:\.[A-Za-z0-9\x80-\xff\\-]+)*\.[A-Za-z\x80-\xff\\]{2,}")
_LOCAL_PART = frozenset(range(0x21, 0x100)) - frozenset(b"@\"'<>()[],;:\\")
# Bare digit runs (a phone logged without its +): digits masked to "0", ASCII letters to "a" and
# everything else to " ", then runs of ten or more zeros found by a literal search, and only those
# compared with the run's phones. (Letters are not separators: `123a456b7890` in a hex id is a token.)
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MASK = bytes(0x30 if 0x30 <= b <= 0x39 else 0x61 if b in _LETTERS else 0x20 for b in range(256))
_DIGIT_RUN = re.compile(rb"0000000000(?<!00000000000)0{0,5}(?!0)")  # exactly 10 to 15, found by the literal
# National formats, 3-3-4 digits with any separators: (202) 555-0143, 202-555-0143, 202.555.0143, tel:...
# Found by its fixed tail (a regex that starts with a literal skims at memory speed; one that starts
# with `000` stopped at every masked timestamp and took 80% of the scan), its head confirmed by hand.
_NATIONAL_TAIL = re.compile(rb"000 0000(?!0)")
# A digit run with a letter beside it is part of a token (a hex request id, a base64 blob), not a phone
# written out: uuid4().hex holds a run of ten or more digits one time in six, and in a run with a million
# phones one of them matched a phone's last ten digits every few hundred thousand lines (`_LETTERS`).
CHUNK = 16 * 1024 * 1024  # a file is scanned this much at a time (with its masked copy: ~3x in memory)
KINDS = ("email", "jwt", "bearer", "phone", "secret", "name")


def _hits(
    data: bytes, secrets: Sequence[bytes], names: Sequence[bytes] = ()
) -> tuple[list[tuple[int, str]], list[tuple[int, bytes]]]:
    """(position, kind) of every sure hit, and (position, digits) of every bare 10-15 digit run."""
    hits: list[tuple[int, str]] = [(m.start(), "phone") for m in _PHONE.finditer(data)]
    hits += [(m.start(), "jwt") for m in _JWT.finditer(data)]
    hits += [
        (m.start(), "bearer") for m in _BEARER.finditer(data) if m.start() and data[m.start() - 1] in b"Bb"
    ]
    hits += [
        (m.start(), "email")
        for m in _EMAIL.finditer(data)
        if m.start() and data[m.start() - 1] in _LOCAL_PART
    ]
    for kind, needles in (("secret", secrets), ("name", names)):
        for needle in needles:
            at = data.find(needle)
            while at >= 0:
                hits.append((at, kind))
                at = data.find(needle, at + 1)
    masked = data.translate(_MASK)
    runs = [
        (m.start(), data[m.start() : m.end()])
        for m in _DIGIT_RUN.finditer(masked)
        if _standalone(data, m.start(), m.end())
    ]
    for start, end in _national(masked):
        if _standalone(data, start, end):
            runs.append((start, bytes(b for b in data[start:end] if 0x30 <= b <= 0x39)))
    return hits, runs


def _national(masked: bytes) -> Iterator[tuple[int, int]]:
    """Where a 3-3-4 digit group stands in the masked data: `000`, one or two separators, `000`, one
    separator, `0000`, with no digit either side (the tail is found first, the head checked)."""
    for m in _NATIONAL_TAIL.finditer(masked):
        tail = m.start()
        for gap in (1, 2):
            head = tail - gap - 3
            if (
                head >= 0
                and masked[head : tail - gap] == b"000"
                and masked[tail - gap : tail] == b" " * gap
                and (head == 0 or masked[head - 1] != 0x30)
            ):
                yield head, m.end()
                break


def _standalone(data: bytes, start: int, end: int) -> bool:
    """No letter right before or after `data[start:end]` (see `_LETTERS`)."""
    return (start == 0 or data[start - 1] not in _LETTERS) and (end == len(data) or data[end] not in _LETTERS)


def _chunks(path: Path) -> Iterator[bytes]:
    """The file in large pieces that end at a line end (a last line without one is kept too)."""
    carry = b""
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            block = carry + block
            end = block.rfind(b"\n") + 1
            if end == 0:
                carry = block
                continue
            carry = block[end:]
            yield block[:end]
    if carry:
        yield carry + b"\n"


@dataclass
class LogScan:
    """What the scan found, by file and line (never the values, except digit runs to compare with phones)."""

    lines: int = 0
    hits: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, kind)
    digit_runs: list[tuple[str, int, bytes]] = field(default_factory=list)  # (file, line, digits)


def scan_log_files(log_files: list[Path], secrets: Sequence[str], names: Sequence[str] = ()) -> LogScan:
    """Every line of every file, for phones, emails, tokens, the run's secrets and its customers' names
    (picklable result, so it can run in another process while the rest of the check goes on)."""
    needles = [s.encode() for s in secrets if len(s) >= 6]
    name_needles = [n.encode() for n in names if len(n) >= 3]
    scan = LogScan()
    for path in log_files:
        first_line = 1
        for data in _chunks(path):
            hits, runs = _hits(data, needles, name_needles)
            found = [(at, kind) for at, kind in hits] + [(at, digits) for at, digits in runs]
            position, line = 0, first_line
            for at, what in sorted(found, key=lambda item: item[0]):
                line += data.count(b"\n", position, at)
                position = at
                if isinstance(what, bytes):
                    scan.digit_runs.append((path.name, line, what))
                else:
                    scan.hits.append((path.name, line, what))
            count = data.count(b"\n")
            scan.lines += count
            first_line += count
    return scan


def scan_logs(
    log_files: Iterable[Path], phones: set[str], secrets: Iterable[str], result: CheckResult
) -> dict[str, int]:
    """Count suspect log lines by kind; witnesses name the file and line number, never the value."""
    return tally(scan_log_files(list(log_files), list(secrets)), phones, result)


def tally(scan: LogScan, phones: Iterable[str], result: CheckResult) -> dict[str, int]:
    """`phones` (the run's, a million of them in a big run) is read only when some digit run was found:
    two sets of a million phones are not free."""
    # A phone as logged without its `+`, or in national form (its last ten digits, as US numbers are
    # written at home: the lab's world is US numbers).
    bare_phones: set[bytes] = set()
    if scan.digit_runs:
        bare = [p.lstrip("+").encode() for p in phones]
        bare_phones = {*bare, *(p[-10:] for p in bare if len(p) > 10)}
    by_line: dict[tuple[str, int], set[str]] = {}
    for name, line, kind in scan.hits:
        by_line.setdefault((name, line), set()).add(kind)
    for name, line, digits in scan.digit_runs:
        if digits in bare_phones:
            by_line.setdefault((name, line), set()).add("phone")
    found = dict.fromkeys(KINDS, 0)
    found["lines"] = scan.lines
    for (name, line), kinds in sorted(by_line.items()):
        for kind in kinds:
            found[kind] += 1
        result.witness({"log": name, "line": line, "contains": sorted(kinds)})
    return found


def check(
    scan: LogScan,
    phones: Iterable[str],
    history: list[dict[str, Any]],
    personal_data: list[list[Any]],
) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    found = tally(scan, phones, result)
    erased: list[dict[str, Any]] = [
        e["value"] for e in history if e.get("f") == "redact" and e["type"] == OK and e["value"].get("phone")
    ]
    leftovers = 0
    needles = {v: e["customer"] for e in erased for v in (e["phone"], e["email"]) if v}
    if needles:
        for table, column, row, value in personal_data:
            text = str(value)
            hits = [n for n in needles if n in text]
            if hits:
                leftovers += 1
                result.witness(
                    {"erased_customer": needles[hits[0]], "still_in": f"{table}.{column}", "row": row}
                )
    result.counts = {
        "log_lines_scanned": found["lines"],
        "lines_with_phones": found["phone"],
        "lines_with_emails": found["email"],
        "lines_with_tokens": found["jwt"] + found["bearer"],
        "lines_with_secrets": found["secret"],
        "lines_with_customer_names": found["name"],
        "customers_erased": len(erased),
        "erased_values_still_stored": leftovers,
    }
    result.valid = not (
        found["phone"]
        or found["email"]
        or found["jwt"]
        or found["bearer"]
        or found["secret"]
        or found["name"]
        or leftovers
    )
    return result
