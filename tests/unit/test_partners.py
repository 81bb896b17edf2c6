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


# -- issue 24: the betas a partner may name, and its Workspace --------------------


def test_betas_and_workspace_are_checked_kept_and_round_trip(tmp_path: Path) -> None:
    acme = Partner("acme", "env:X", betas=("mcp-client-2025-11-20",), workspace_id="wrkspc_01")
    assert acme.refused_beta(["mcp-client-2025-11-20"]) is None
    assert acme.refused_beta(["mcp-client-2025-11-20", "compact-2026-01-12"]) == (
        "compact-2026-01-12"
    )
    assert Partner("globex", "env:X").refused_beta(["mcp-client-2025-11-20"]) is not None
    path = tmp_path / "partners.toml"
    save_partners(path, {"acme": acme})
    assert load_partners(path) == {"acme": acme}
    assert Partner.from_record(acme.to_record()) == acme
    for bad in ({"betas": ("MCP Client",)}, {"betas": ("a\r\nx: 1",)},
                {"workspace_id": "wrk space"}, {"workspace_id": ""}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"^partner acme: (beta|workspace_id) "):
            Partner("acme", "env:X", **bad)


def test_partners_set_takes_betas_and_a_workspace_and_clears_them() -> None:
    from pipeline.cli import build_parser
    from pipeline.cli.admin import _given

    parser = build_parser()
    args = parser.parse_args(
        ["partners", "set", "acme", "--betas", "mcp-client-2025-11-20,compact-2026-01-12",
         "--workspace-id", "wrkspc_01"]
    )  # fmt: skip
    assert _given(args) == {
        "betas": ("mcp-client-2025-11-20", "compact-2026-01-12"),
        "workspace_id": "wrkspc_01",
    }
    args = parser.parse_args(["partners", "set", "acme", "--betas", "", "--workspace-id", ""])
    assert _given(args) == {"betas": (), "workspace_id": None}
