"""Bearer tokens on the HTTP API (avatarchat/access.py) through the Gateway's own middleware."""

import httpx
import pytest
from fastapi import FastAPI

from avatarchat.access import AccessPolicy, check_access, load_policy, scope_of
from avatarchat.config import Access
from avatarchat.errors import ConfigError
from deployments.gateway import api as gateway_api

USER, OPERATOR = "user-secret-123", "operator-secret-456"


def app_with(policy: AccessPolicy) -> FastAPI:
    """The Gateway's middleware in front of an app without routes (the real ones need a replica):
    a request it lets through gets 404, one it stops 401."""
    app = FastAPI()
    app.middleware("http")(check_access)
    app.state.access = policy
    return app


async def status(app, method: str, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        return (await client.request(method, path, headers=headers)).status_code


CASES = [("GET", "/healthz", "open"), ("GET", "/", "open"), ("GET", "/static/app.js", "open"),
         ("POST", "/v1/sessions", "user"), ("DELETE", "/v1/sessions/abc", "user"),
         ("GET", "/v1/sessions", "user"), ("POST", "/v1/turns", "user"), ("GET", "/v1/ice", "user"),
         ("GET", "/v1/avatar", "user"), ("GET", "/v1/diagnostics", "operator"),
         ("GET", "/v1/stages", "operator"), ("GET", "/v1/info", "user"), ("GET", "/docs", "operator"),
         ("GET", "/openapi.json", "operator"), ("GET", "/v1/anything-new", "operator")]


@pytest.mark.parametrize("method, path, scope", CASES)
async def test_each_route_needs_its_token(method, path, scope):
    assert scope_of(method, path) == scope
    app = app_with(AccessPolicy(USER, OPERATOR))
    codes = {who: await status(app, method, path, token)
             for who, token in (("none", None), ("wrong", "nope"), ("user", USER), ("operator", OPERATOR))}
    passed = {who for who, code in codes.items() if code != 401}
    expected = {"open": {"none", "wrong", "user", "operator"}, "user": {"user", "operator"},
                "operator": {"operator"}}[scope]
    assert passed == expected, codes


async def test_a_refusal_says_what_is_needed_and_how():
    app = app_with(AccessPolicy(USER, OPERATOR))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        r = await client.post("/v1/sessions", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "user token" in r.json()["error"] and "Authorization: Bearer" in r.json()["error"]
    assert USER not in r.text and OPERATOR not in r.text


async def test_without_tokens_everything_is_open():
    app = app_with(AccessPolicy())
    for method, path, _ in CASES:
        assert await status(app, method, path) != 401


def test_every_gateway_route_is_placed_on_purpose():
    """A new route is closed (operator) until placed in avatarchat/access.py: list them here."""
    paths = gateway_api.openapi()["paths"]
    routes = {(m.upper(), path) for path, methods in paths.items() for m in methods}
    assert ("GET", "/v1/diagnostics") in routes  # the Gateway's routes are all there
    routes |= {("GET", "/"), ("GET", "/static/{name}")}  # the page: left out of the schema
    open_or_user = {(m, p) for m, p in routes if scope_of(m, p) != "operator"}
    assert open_or_user == {("GET", "/"), ("GET", "/healthz"), ("GET", "/static/{name}"),
                            ("POST", "/v1/sessions"), ("GET", "/v1/sessions"),
                            ("DELETE", "/v1/sessions/{session_id}"), ("POST", "/v1/turns"),
                            ("GET", "/v1/ice"), ("GET", "/v1/avatar"), ("GET", "/v1/info")}


def test_tokens_come_from_the_environment_and_a_missing_one_fails_the_start(monkeypatch):
    monkeypatch.setenv("AC_USER", USER)
    monkeypatch.delenv("AC_OPERATOR", raising=False)
    access = Access(user_token_env="AC_USER", operator_token_env="AC_OPERATOR")
    with pytest.raises(ConfigError, match=r"access\.operator_token_env: environment variable AC_OPERATOR "
                                          r"is not set"):
        load_policy(access, "127.0.0.1")
    monkeypatch.setenv("AC_OPERATOR", OPERATOR)
    assert load_policy(access, "0.0.0.0") == AccessPolicy(USER, OPERATOR)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "avatar.example.org"])
def test_an_open_api_beyond_loopback_is_refused_unless_said_explicitly(host, monkeypatch):
    monkeypatch.setenv("AC_USER", USER)
    with pytest.raises(ConfigError, match=r"access\.user_token_env: the service is bound to .* beyond "
                                          r"loopback, and access.user_token_env and "
                                          r"access.operator_token_env are not set"):
        load_policy(Access(), host)
    with pytest.raises(ConfigError, match=r"access\.operator_token_env: .* is not set: anyone"):
        load_policy(Access(user_token_env="AC_USER"), host)
    assert load_policy(Access(allow_open_beyond_loopback=True), host) == AccessPolicy()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_may_stay_open(host):
    assert load_policy(Access(), host) == AccessPolicy()


def test_the_config_check_refuses_an_open_api_beyond_loopback(tmp_path, monkeypatch, capsys):
    """`python -m avatarchat.config` (scripts/serve.sh runs it before Ray starts)."""
    import yaml

    from avatarchat.config import main
    from avatarchat.local_cluster import ROOT

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["host"] = "0.0.0.0"
    path = tmp_path / "exposed.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main([str(path)]) == 1
    assert "access.user_token_env: the service is bound to '0.0.0.0'" in capsys.readouterr().err
    doc["applications"][0]["args"]["access"] = {"user_token_env": "AC_USER", "operator_token_env": "AC_OP"}
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("AC_USER", USER)
    monkeypatch.setenv("AC_OP", OPERATOR)
    assert main([str(path)]) == 0
