"""The bad inputs of issue 22, run the way they were found: the real `forgetctl` in a
subprocess against a real home.

Each refused case must exit with its documented code (never 1, never a traceback), say one
line on stderr, and write nothing: the ledger's events and requests, the payload keys and
the files of the home and of the working directory are as they were. The cases that must
succeed (valid JSONL with U+2028, names with markup) are checked for what they print.
Also here: two concurrent `request add --ref SAME`, and no payload key left by a refused
import.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forgetctl.core.inputs import MAX_ID

BIG = str(MAX_ID + 1)
EXE = [str(Path(sys.executable).with_name("forgetctl"))]  # the installed entry point


def forgetctl(
    home: Path, *args: str, cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FORGETCTL_HOME", None)
    return subprocess.run(
        [*EXE, "--home", str(home), *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def snapshot(home: Path, work: Path) -> dict:
    """What a refused command must not change."""
    db = sqlite3.connect(home / "ledger.db")
    try:
        events = db.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
        requests = db.execute("SELECT COUNT(*) FROM requests").fetchone()
    finally:
        db.close()

    def files(root: Path) -> list[str]:
        skip = {"ledger.db", "ledger.db-wal", "ledger.db-shm"}
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name not in skip)

    return {"events": events, "requests": requests, "home": files(home), "work": files(work)}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    """A home with two requests, and a working directory of hostile files."""
    root = tmp_path_factory.mktemp("corpus")
    home, work = root / "home", root / "work"
    work.mkdir()
    for args in (["init"], ["request", "add", "--subject", "Ann Lee", "--regulation", "gdpr"],
                 ["request", "add", "--subject", "Bob Ray", "--regulation", "gdpr"]):  # fmt: skip
        assert forgetctl(home, *args, cwd=work).returncode == 0
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (work / "deep.jsonl").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (work / "bigint.json").write_text('{"regulation": "gdpr", "x": ' + "9" * 5000 + "}")
    (work / "nan.json").write_text('{"regulation": NaN}')
    (work / "unterminated.csv").write_text('subject,regulation\n"Ann Lee,gdpr\nBob Ray,gdpr\n')
    # as found: the open quote of the last column swallowed the next row into the name
    (work / "swallowed.csv").write_text('regulation,subject\ngdpr,"Ann Lee\ngdpr,Bob Ray\n')
    (work / "unterminated.json").write_text('{"regulation": "gdpr",\n "subject": {"name": "A')
    (work / "null.json").write_text("[null]")
    (work / "generated-ref.json").write_text(
        '{"regulation": "gdpr", "ref": "FCTL-20260101-00003", "subject": {"name": "Cy"}}'
    )
    (work / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000)
    (work / "bigint.toml").write_text("deadline_days = " + "9" * 5000)
    (work / "records-control.jsonl").write_text('{"text": "x"}\n\x00\n')
    (work / "dir.json").mkdir()
    os.mkfifo(work / "fifo.json")
    os.mkfifo(work / "fifo.toml")
    os.mkfifo(work / "out.fifo")
    (work / "outdir").mkdir()
    return home, work


ADD = ["request", "add", "--regulation", "gdpr", "--subject"]

# (name, args, exit code): each must be refused with one line and change nothing.
REFUSED = [
    # ids over 2^63-1, and negative
    *[
        (f"{cmd} {BIG}", ["request", cmd, BIG, *extra], 2)
        for cmd, extra in (
            ("show", []),
            ("cancel", ["--reason", "r"]),
            ("approve", []),
            ("purge", ["--now", "--reason", "r"]),
            ("extend", ["--days", "1", "--reason", "r", "--notified", "2026-01-01"]),
        )
    ],  # fmt: skip
    ("show -1", ["request", "show", "-1"], 2),
    ("show max id", ["request", "show", str(MAX_ID)], 3),
    ("plan show big", ["plan", "show", BIG], 2),
    ("ledger log --request big", ["ledger", "log", "--request", BIG], 2),
    ("report big", ["report", BIG], 2),
    ("report v big", ["report", "v" + BIG], 2),
    ("verify big", ["verify", BIG], 2),
    ("promote big", ["promote", BIG], 2),
    ("rollback --to big", ["rollback", "--to", BIG], 2),
    ("apply big", ["apply", BIG], 2),
    ("model export big", ["model", "export", BIG, "--out", "m"], 2),
    ("model ask --version big", ["model", "ask", "q", "--version", BIG], 2),
    ("show superscript digit (a ref no request has)", ["request", "show", "\u00b2"], 3),
    # JSON depth and number size
    ("JSON nested 100,000 deep", ["request", "import", "deep.json"], 2),
    ("JSONL nested 100,000 deep", ["request", "import", "deep.jsonl"], 2),
    ("integer of 5,000 digits", ["request", "import", "bigint.json"], 2),
    ("NaN", ["request", "import", "nan.json"], 2),
    ("null document", ["request", "import", "null.json"], 2),
    ("unterminated JSON string", ["request", "import", "unterminated.json"], 2),
    ("TOML nested 5,000 deep", ["policy", "check", "deep.toml"], 2),
    ("TOML integer of 5,000 digits", ["policy", "check", "bigint.toml"], 2),
    # files that are not regular files
    ("import a FIFO", ["request", "import", "fifo.json"], 2),
    ("import /dev/zero", ["request", "import", "/dev/zero"], 2),
    ("import a directory", ["request", "import", "dir.json"], 2),
    ("--records /dev/zero", [*ADD, "A B", "--records", "/dev/zero"], 2),
    ("--records a FIFO", [*ADD, "A B", "--records", "fifo.json"], 2),
    ("--records empty path", [*ADD, "A B", "--records", ""], 2),
    ("--records binary", [*ADD, "A B", "--records", "records-control.jsonl"], 2),
    ("policy check /dev/zero", ["policy", "check", "/dev/zero"], 2),
    ("policy check a FIFO", ["policy", "check", "fifo.toml"], 2),
    ("verify --against /dev/zero", ["ledger", "verify", "--against", "/dev/zero"], 2),
    ("verify --against deep", ["ledger", "verify", "--against", "deep.json"], 2),
    # refs and CSV
    ("a ref that looks generated", [*ADD, "Cy Dee", "--ref", "FCTL-20260101-00003"], 2),
    ("a file ref that looks generated", ["request", "import", "generated-ref.json"], 2),
    ("CSV with an unterminated quote", ["request", "import", "unterminated.csv"], 2),
    ("CSV quote swallowing a row", ["request", "import", "swallowed.csv"], 2),
    # names with no letter, or control characters
    *[
        (f"name {name!r}", [*ADD, name], 2)
        for name in (
            "\u200b",
            "\ufeff",
            "\u0301\u0301",
            "\u202e",
            "\u2066\u2069",
            "\x07",
            "\x1b[31m",
            "Ann\x1b[2JLee",
            "\u200b\u200c\u200d",
            " ",
        )
    ],  # fmt: skip
    ("alias of zero-width only", [*ADD, "Ann Lee", "--alias", "\u200b"], 2),
    # --out that is not a regular file
    # Never a real device here: code that renames over its target would replace the
    # node (as root, the code before the fix replaced /dev/full). A FIFO is refused by the
    # same rule (only a regular file is written) and is ours to lose.
    ("report --out a FIFO", ["report", "1", "--out", "out.fifo"], 2),
    ("report --out a directory", ["report", "1", "--out", "outdir"], 2),
    ("ledger export --out a FIFO", ["ledger", "export", "--out", "out.fifo"], 2),
    ("ledger export --out a directory", ["ledger", "export", "--out", "outdir"], 2),
    # usage errors: one line, the bad-input code
    ("missing option", ["request", "add", "--subject", "x"], 2),
    ("unknown command", ["request", "bogus"], 2),
    ("unknown option", ["request", "list", "--bogus"], 2),
    ("missing argument", ["request", "show"], 2),
    (
        "not a number",
        ["request", "extend", "1", "--days", "x", "--reason", "r", "--notified", "2026-01-01"],
        2,
    ),  # fmt: skip
    ("unknown root option", ["--bogus"], 2),
]


@pytest.mark.parametrize(("name", "args", "code"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_one_line_and_nothing_written(site, name, args, code):
    home, work = site
    before = snapshot(home, work)
    result = forgetctl(home, *args, cwd=work, timeout=20)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    assert snapshot(home, work) == before


def test_clear_messages(site):
    home, work = site
    said = {
        "-1": forgetctl(home, "request", "show", "-1", cwd=work).stderr,
        "records": forgetctl(home, *ADD, "A B", "--records", "", cwd=work).stderr,
        "json": forgetctl(home, "request", "import", "unterminated.json", cwd=work).stderr,
        "null": forgetctl(home, "request", "import", "null.json", cwd=work).stderr,
        "csv": forgetctl(home, "request", "import", "unterminated.csv", cwd=work).stderr,
    }
    assert "not an id" in said["-1"] and "No such option" not in said["-1"]
    assert "path is empty" in said["records"] and "Is a directory" not in said["records"]
    assert "at at" not in said["json"] and "line 2" in said["json"]
    assert "got null" in said["null"] and "NoneType" not in said["null"]
    assert "line 2" in said["csv"]  # where the unterminated record begins


def test_accepted_inputs_print_literally(site):
    home, work = site
    (work / "u2028.jsonl").write_text(
        '{"regulation": "gdpr", "subject": {"name": "Dee\u2028Eve"}, "notes": "a\u0085b"}\n'
        '{"regulation": "gdpr", "subject": {"name": "Fay Gil"}}\n',
        encoding="utf-8",
    )
    done = forgetctl(home, "request", "import", "u2028.jsonl", cwd=work)
    assert done.returncode == 0 and "2 imported" in done.stdout, done.stderr
    added = forgetctl(
        home,
        *ADD,
        "Ann [/] [bold]Lee[/bold]",
        "--alias",
        "[red]x",
        "--notes",
        "\x1b]0;title\x07 \x1b[2J",
        "--ref",
        "MARKUP-1",
        cwd=work,
    )
    assert added.returncode == 0, added.stderr  # fmt: skip
    rid = added.stdout.split()[1]
    by_ref = forgetctl(home, "request", "show", "MARKUP-1", cwd=work)
    assert by_ref.returncode == 0 and f"request {rid}" in by_ref.stdout, by_ref.stderr
    shown = forgetctl(home, "request", "show", rid, cwd=work)
    assert shown.returncode == 0, shown.stderr
    assert "Ann [/] [bold]Lee[/bold]" in shown.stdout and "[red]x" in shown.stdout
    cancelled = forgetctl(home, "request", "cancel", rid, "--reason", "[/] \x1b[31m", cwd=work)
    assert cancelled.returncode == 0, cancelled.stderr
    for args in (["ledger", "log"], ["request", "show", rid], ["report", rid]):
        printed = forgetctl(home, *args, cwd=work)
        assert printed.returncode == 0 and "\x1b" not in printed.stdout, (args, printed.stderr)
    # a ref-less add after a ledger that holds FCTL-like refs still works
    assert forgetctl(home, *ADD, "Hal Ito", cwd=work).returncode == 0


def test_home_damage_is_one_line(tmp_path):
    home, work = tmp_path / "home", tmp_path
    assert forgetctl(home, "init", cwd=work).returncode == 0
    shutil.rmtree(home / "policies")
    home.joinpath("policies").mkdir()
    no_policy = forgetctl(home, *ADD, "Ann Lee", cwd=work)
    assert no_policy.returncode == 3 and "no policies" in no_policy.stderr, no_policy.stderr
    keys = home / "keys"
    shutil.rmtree(keys)
    keys.write_text("not a directory")
    for args in (["request", "list"], ["init"], ["ledger", "verify"]):
        result = forgetctl(home, *args, cwd=work)
        assert result.returncode in (2, 5) and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().split("\n")) == 1, result.stderr
    keys.unlink()
    (home / "ledger.db").write_bytes(b"junk" * 100)
    junk = forgetctl(home, "request", "list", cwd=work)
    assert junk.returncode == 5 and len(junk.stderr.strip().split("\n")) == 1, junk.stderr


def test_private_files(tmp_path):
    home, work = tmp_path / "home", tmp_path
    assert forgetctl(home, "init", cwd=work).returncode == 0
    assert forgetctl(home, *ADD, "Ann Lee", cwd=work).returncode == 0
    assert (
        forgetctl(home, "report", "1", "--out", str(home / "reports" / "1.md"), cwd=work).returncode
        == 0
    )
    assert forgetctl(home, "ledger", "export", "--out", "export.json", cwd=work).returncode == 0
    for path in (home / "ledger.db", home / "reports" / "1.md", work / "export.json"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in (home, home / "keys", home / "cache", home / "logs"):
        assert path.stat().st_mode & 0o777 == 0o700, path


def test_two_concurrent_adds_of_the_same_ref(tmp_path):
    """The ref check and the insert are one transaction: of two processes adding the same
    ref at once, one creates it and the other finds it; neither crashes."""
    home, work = tmp_path / "home", tmp_path
    assert forgetctl(home, "init", cwd=work).returncode == 0
    for round_ in range(3):
        args = [*ADD, f"Ann Lee {'I' * (round_ + 1)}", "--ref", f"SAME-{round_}"]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: forgetctl(home, *a, cwd=work), [args, args]))
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        said = sorted(r.stdout for r in results)
        assert "already exists" in said[0] and "received;" in said[1], said
    db = sqlite3.connect(home / "ledger.db")
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3
    db.close()


def test_out_refuses_a_device_and_leaves_it(tmp_path, monkeypatch):
    """write_atomic on what lstat says is a character device: refused, the node and its
    directory untouched (a fake node: a test must never aim at a real one)."""
    from forgetctl.core.errors import BadInput
    from forgetctl.core.files import write_atomic

    node = tmp_path / "full"
    node.write_text("the device")
    real = os.lstat

    def lstat(path, *args, **kwargs):
        st = real(path, *args, **kwargs)
        if Path(path) == node:
            return os.stat_result((stat.S_IFCHR | 0o666, *tuple(st)[1:]))
        return st

    monkeypatch.setattr(os, "lstat", lstat)
    with pytest.raises(BadInput, match="character device"):
        write_atomic(node, "a report")
    assert node.read_text() == "the device" and os.listdir(tmp_path) == ["full"]
