"""The kit itself: flask_traffic.testing fails a store that breaks the
contract, with a message that says how, and needs no pytest."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_traffic import LogPolicy
from flask_traffic.query import Query
from flask_traffic.stores import JSONStore, MemoryStore, Store
from flask_traffic.testing import StoreContract


class LowerCaseAgents(MemoryStore):
    """Reads user agents back in lower case."""

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        for row in super().scan(query, oldest_first=oldest_first):
            row["request_user_agent"] = row["request_user_agent"].lower()
            yield row


class WholeMilliseconds(MemoryStore):
    """Reads response times back as ints."""

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        for row in super().scan(query, oldest_first=oldest_first):
            row["response_time"] = round(row["response_time"])
            yield row


class NewestFirstOnly(MemoryStore):
    """Ignores oldest_first."""

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        return super().scan(query)


class NeverFrozen(LogPolicy):
    def freeze(self, owner: str) -> None:
        pass


def memory(folder: Path, log_policy: LogPolicy) -> Store:
    return MemoryStore(log_policy=log_policy)


@pytest.mark.parametrize(
    ("store_class", "check", "message"),
    [
        (
            LowerCaseAgents,
            "read_back",
            r"^read\(\) differs from the reference: row 0\['request_user_agent'\] is 'werkzeug",
        ),
        (
            WholeMilliseconds,
            "read_back",
            r"^read\(\) differs .*\['response_time'\] is \d+ \(int\), the reference's .*\(float\)",
        ),
        (
            NewestFirstOnly,
            "oldest_first_scan",
            r"^scan\(query\(\), oldest_first=True\) differs from the reference: row 0",
        ),
    ],
)
def test_a_store_that_reads_back_otherwise_fails(
    tmp_path: Path, store_class: type[MemoryStore], check: str, message: str
) -> None:
    contract = StoreContract(lambda folder, log_policy: store_class(log_policy=log_policy))
    with pytest.raises(AssertionError, match=message):
        contract.run(check, tmp_path)


def test_a_policy_that_does_not_freeze_fails(tmp_path: Path) -> None:
    def make(folder: Path, log_policy: LogPolicy) -> Store:
        log_policy.__class__ = NeverFrozen
        return MemoryStore(log_policy=log_policy)

    message = r"^policy.request_user_agent = False after init_app did not raise"
    with pytest.raises(AssertionError, match=message):
        StoreContract(make).check_frozen_policy(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda folder, log_policy: object(),
            "make_store must return a flask_traffic.stores.Store",
        ),
        (lambda folder, log_policy: MemoryStore(), "the log_policy it is passed"),
    ],
)
def test_a_factory_that_breaks_its_rules_fails(tmp_path: Path, make: t.Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        StoreContract(make).check_read_back(tmp_path)


def test_a_store_that_is_not_empty_fails(tmp_path: Path) -> None:
    # Every store made writes to one file: the second check finds the first one's rows.
    contract = StoreContract(
        lambda folder, log_policy: JSONStore(location=tmp_path / "kept", log_policy=log_policy)
    )
    contract.check_summary(tmp_path)
    with pytest.raises(AssertionError, match="holds nothing yet; JSONStore already holds 16 row"):
        contract.check_summary(tmp_path)


def test_checks_are_named_and_all_run(tmp_path: Path) -> None:
    contract = StoreContract(memory)
    with pytest.raises(ValueError, match=r"^check must be one of read_back, limit_and_fields"):
        contract.run("everything", tmp_path)
    with pytest.raises(TypeError, match="make_store must be a callable"):
        StoreContract(MemoryStore())  # type: ignore[arg-type]
    contract.check_all(tmp_path)
    # Each check worked in a folder of its own, and can run twice in one folder.
    contract.run("summary", tmp_path)
    folders = sorted(path.name.rsplit("-", 1)[0] for path in tmp_path.iterdir())
    assert folders == sorted([*StoreContract.CHECKS, "summary"])


def test_imports_without_pytest() -> None:
    code = "import sys; sys.modules['pytest'] = None; import flask_traffic.testing"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_readme_store_keeps_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README.md, "Writing your own store": the example store, then its test.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Writing your own store") :]
    store_code, test_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    package = types.ModuleType("mypackage")
    exec(compile(store_code, "README.md", "exec"), package.__dict__)
    monkeypatch.setitem(sys.modules, "mypackage", package)
    namespace: dict[str, t.Any] = {}
    exec(compile(test_code, "README.md", "exec"), namespace)
    for check in StoreContract.CHECKS:
        namespace["test_sqlite_store_keeps_the_contract"](check, tmp_path)
