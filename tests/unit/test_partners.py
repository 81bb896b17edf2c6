from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.partners import (
    Partner,
    Registry,
    check_partner_id,
    load_partners,
    partner_of_requests_topic,
    requests_topic,
    save_partners,
)


def test_partner_ids_follow_the_contract() -> None:
    for good in ("acme", "a", "0-gateway_2", "x" * 63):
        assert check_partner_id(good) == good
    for bad in ("", "Acme", "-x", "_x", "a.b", "x" * 64, "a b"):
        with pytest.raises(ConfigError):
            check_partner_id(bad)


def test_topic_names() -> None:
    assert requests_topic("acme") == "claude.requests.acme"
    assert partner_of_requests_topic("claude.requests.acme") == "acme"
    assert partner_of_requests_topic("claude.responses.acme") is None


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "partners.toml"
    partners = {
        "acme": Partner(
            "acme",
            'env:ACME_"SECRET',
            weight=3,
            rpm=600,
            allowed_models=("claude-haiku-4-5",),
            monthly_budget_usd=12.5,
        ),
        "globex": Partner("globex", "file:/run/secrets/globex", enabled=False),
    }
    save_partners(path, partners)
    assert load_partners(path) == partners


def test_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    assert load_partners(tmp_path / "none.toml") == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight": 0},
        {"rpm": 0},
        {"monthly_budget_usd": -1.0},
        {"signing_secret_ref": "not-a-ref"},
        {"api_key_ref": "sk-ant-oops"},
    ],
)
def test_invalid_partners_are_refused(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"partner_id": "acme", "signing_secret_ref": "env:X"}
    params.update(kwargs)
    with pytest.raises(ConfigError):
        Partner(**params)  # type: ignore[arg-type]


def test_registry_tells_listeners_about_changes() -> None:
    registry = Registry()
    seen: list[tuple[str, bool, bool]] = []
    registry.listeners.append(lambda pid, b, a: seen.append((pid, b is None, a is None)))
    acme = Partner("acme", "env:X")
    registry.apply("acme", acme)
    registry.apply("acme", acme)  # no change, no event
    registry.apply("acme", acme.with_(enabled=False))
    registry.apply("acme", None)
    assert seen == [("acme", True, False), ("acme", False, False), ("acme", False, True)]
    assert registry.get("acme") is None
