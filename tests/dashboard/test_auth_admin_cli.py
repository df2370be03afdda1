"""`cosession admin`: create users, grant (a role and a profile) and revoke endpoint access."""

from __future__ import annotations

import io
import re

import pytest
from argon2 import PasswordHasher

from config.settings import load
from cosession.cli import main
from dashboard.services import Services
from engine.access import StartGrant, may_start


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("COSESSION_")]:
        monkeypatch.delenv(name)
    return tmp_path / "data"


def admin(data_dir, *argv):
    return main(["admin", "--data-dir", str(data_dir), *argv])


def services_for(data_dir):
    settings = load(env={}, server={"data_dir": str(data_dir)})
    return Services.build(settings, engine=None, bridge=None,  # type: ignore[arg-type]
                          hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def test_create_prints_a_generated_password_once(data_dir, capsys):
    assert admin(data_dir, "create", "carol", "--admin") == 0
    out = capsys.readouterr().out
    password = re.search(r"password: (\S+)", out).group(1)
    assert out.count(password) == 1 and "administrator carol" in out
    services = services_for(data_dir)
    try:
        user = services.users.authenticate("carol", password)
        assert user is not None and user.is_admin
    finally:
        services.close()


def test_create_with_password_from_stdin(data_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a-chosen-password\n"))
    assert admin(data_dir, "create", "dave", "--password-stdin") == 0
    out = capsys.readouterr().out
    assert "a-chosen-password" not in out and "password:" not in out
    services = services_for(data_dir)
    try:
        assert services.users.authenticate("dave", "a-chosen-password").is_admin is False
    finally:
        services.close()


def test_create_errors(data_dir, capsys, monkeypatch):
    assert admin(data_dir, "create", "erin") == 0
    assert admin(data_dir, "create", "erin") == 1
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert admin(data_dir, "create", "frank", "--password-stdin") == 1
    assert "password" in capsys.readouterr().err


def test_grant_and_revoke(data_dir, capsys):
    admin(data_dir, "create", "gina")
    services = services_for(data_dir)
    try:
        record = services.endpoints.create("box", "ssh", "h")
        assert admin(data_dir, "grant", "gina", "box") == 0
        assert "gina may now use box" in capsys.readouterr().out
        gina = services.users.get_by_name("gina")
        assert services.access.may_join(gina, record.id)
        assert admin(data_dir, "grant", "gina", record.id) == 0
        assert "already" in capsys.readouterr().out
        assert admin(data_dir, "grant", "nobody", "box") == 1
        assert "no user named 'nobody'" in capsys.readouterr().err
        assert admin(data_dir, "grant", "gina", "nothing") == 1
        assert admin(data_dir, "revoke", "gina", "box") == 0
        assert not services.access.may_join(gina, record.id)
        assert admin(data_dir, "users") == 0
        assert "gina" in capsys.readouterr().out
    finally:
        services.close()


def test_grant_with_a_role_and_a_profile(data_dir, capsys):
    admin(data_dir, "create", "hana")
    services = services_for(data_dir)
    try:
        record = services.endpoints.create("box", "ssh", "h")
        services.profiles.create_profile("Recorded", "record", clipboard_upload=True)
        hana = services.users.get_by_name("hana")
        assert admin(data_dir, "grant", "hana", "box", "--role", "viewer", "--profile", "Recorded") == 0
        assert "hana may now use box (role viewer, profile Recorded)" in capsys.readouterr().out
        facts = services.access.facts(hana, record.id)
        assert facts.role.value == "viewer" and facts.profile.name == "Recorded"
        grant = may_start(facts, services.now())
        assert isinstance(grant, StartGrant) and grant.record
        # again with another role: the role changes, the Standard profile joins the first one
        assert admin(data_dir, "grant", "hana", "box", "--role", "supervisor") == 0
        assert "hana already had a role on box; now role supervisor, profile Standard" in capsys.readouterr().out
        facts = services.access.facts(hana, record.id)
        assert facts.role.value == "supervisor" and facts.profile.name == "Recorded + Standard"
        assert admin(data_dir, "grant", "hana", "box", "--profile", "Nothing") == 1
        assert "no profile named 'Nothing'" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # argparse refuses an unknown role
            admin(data_dir, "grant", "hana", "box", "--role", "emperor")
        assert "invalid choice: 'emperor'" in capsys.readouterr().err
        assert admin(data_dir, "revoke", "hana", "box") == 0
        assert services.access.facts(hana, record.id).role is None
    finally:
        services.close()
