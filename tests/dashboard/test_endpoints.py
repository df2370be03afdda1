"""The endpoint repository: validation, encrypted credentials, access, host keys."""

from __future__ import annotations

import base64
import os

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from dashboard.repositories import tables
from dashboard.repositories.access import Access
from dashboard.repositories.grants import Grants
from dashboard.repositories.model import AccessError
from dashboard.repositories.profiles import Profiles
from dashboard.repositories.accounts import AccountError, Users
from dashboard.repositories.endpoints import EndpointError, Endpoints, host_key_fingerprint
from dashboard.security.secrets import DecryptionFailed, Secrets
from engine.access import AssetRole
from dashboard.repositories.tables import endpoint_access as t_endpoint_access
from dashboard.repositories.tables import endpoints as t_endpoints
from engine import make_engine
from engine.messages import EndpointSpec, EndpointProtocol, User

KEY_A = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36).decode() + " root@a"
KEY_B = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36).decode()
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"


class FakeEngine:
    def __init__(self) -> None:
        self.told: list[tuple[str, bool]] = []

    def set_joint_session(self, endpoint_id: str, enabled: bool) -> None:
        self.told.append((endpoint_id, enabled))


@pytest.fixture
def db(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
    tables.create(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def secrets():
    return Secrets("s" * 32, os.urandom(32))


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def repo(db, secrets, fake_engine):
    return Endpoints(db, secrets, fake_engine)


@pytest.fixture
def users(db):
    return Users(db, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def raw_row(db, endpoint_id):
    with db.connect() as conn:
        return conn.execute(sa.select(t_endpoints).where(t_endpoints.c.id == endpoint_id)).first()


def test_create_get_list_update_delete(repo):
    record = repo.create("router-1", "ssh", "10.0.0.1", None, username="ops")
    assert record.port == 22 and record.protocol is EndpointProtocol.SSH and record.joint_session
    assert record.spec == EndpointSpec(record.id, "router-1", EndpointProtocol.SSH, True, "10.0.0.1", 22)
    assert not record.has_credentials
    assert repo.get(record.id) == record == repo.get_by_name("router-1")
    vnc = repo.create("desk", EndpointProtocol.VNC, "desk.example", 5901, joint_session=False)
    assert [e.name for e in repo.list()] == ["desk", "router-1"]
    assert vnc.spec.joint_session is False and vnc.port == 5901

    updated = repo.update(record.id, name="router-one", port=2222)
    assert (updated.name, updated.port, updated.host, updated.username) == ("router-one", 2222, "10.0.0.1", "ops")
    assert repo.delete(record.id) is True
    assert repo.get(record.id) is None and repo.delete(record.id) is False


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "", "protocol": "ssh", "host": "h"}, "name"),
    ({"name": "x", "protocol": "gopher", "host": "h"}, "protocol"),
    ({"name": "x", "protocol": "ssh", "host": ""}, "host"),
    ({"name": "x", "protocol": "ssh", "host": "a b"}, "host"),
    ({"name": "x", "protocol": "ssh", "host": "h", "port": 70000}, "port"),
    ({"name": "x", "protocol": "ssh", "host": "h", "port": "ssh"}, "port"),
    ({"name": "x", "protocol": "ssh", "host": "h", "password": "p", "private_key": PRIVATE_KEY}, "not both"),
    ({"name": "x", "protocol": "ssh", "host": "h", "private_key": "hello"}, "private key"),
])
def test_validation(repo, kwargs, message):
    with pytest.raises(EndpointError, match=message):
        repo.create(**kwargs)


def test_names_are_unique(repo):
    repo.create("a", "ssh", "h")
    with pytest.raises(EndpointError, match="already exists"):
        repo.create("a", "rdp", "h")
    other = repo.create("b", "ssh", "h")
    with pytest.raises(EndpointError, match="already exists"):
        repo.update(other.id, name="a")


def test_password_is_encrypted_at_rest(repo, db):
    record = repo.create("box", "ssh", "h", username="root", password="hunter2-secret")
    assert record.secret_kind == "password"
    row = raw_row(db, record.id)
    assert b"hunter2-secret" not in row.secret
    assert "hunter2-secret" not in repr(record)
    credentials = repo.stored_credentials(record.id)
    assert (credentials.username, credentials.password, credentials.private_key) == ("root", "hunter2-secret", None)
    assert "hunter2-secret" not in repr(credentials)


def test_private_key_with_passphrase(repo, db):
    record = repo.create("box", "ssh", "h", username="root", private_key=PRIVATE_KEY, passphrase="pass-phrase")
    assert record.secret_kind == "private_key"
    row = raw_row(db, record.id)
    assert b"OPENSSH" not in row.secret and b"pass-phrase" not in row.secret
    credentials = repo.stored_credentials(record.id)
    assert credentials.private_key.strip() == PRIVATE_KEY and credentials.passphrase == "pass-phrase"
    assert credentials.password is None


def test_credentials_kept_replaced_cleared(repo):
    record = repo.create("box", "ssh", "h", username="u", password="first-password")
    repo.update(record.id, host="h2")
    assert repo.stored_credentials(record.id).password == "first-password"
    repo.update(record.id, password="second-password")
    assert repo.stored_credentials(record.id).password == "second-password"
    cleared = repo.update(record.id, clear_credentials=True)
    assert cleared.secret_kind is None and repo.stored_credentials(record.id) is None


def test_a_blob_decrypts_only_on_its_own_endpoint(repo, db):
    a = repo.create("a", "ssh", "h", password="password-a")
    b = repo.create("b", "ssh", "h", password="password-b")
    with db.begin() as conn:
        blob = raw_row(db, a.id).secret
        conn.execute(t_endpoints.update().where(t_endpoints.c.id == b.id).values(secret=blob))
    with pytest.raises(DecryptionFailed):
        repo.stored_credentials(b.id)


def test_another_key_cannot_decrypt(repo, db, fake_engine):
    record = repo.create("a", "ssh", "h", password="password-a")
    other = Endpoints(db, Secrets("s" * 32, os.urandom(32)), fake_engine)
    with pytest.raises(DecryptionFailed):
        other.stored_credentials(record.id)


def test_joint_session_toggle_tells_the_engine(repo, fake_engine):
    record = repo.create("a", "ssh", "h")
    repo.set_joint_session(record.id, False)
    assert repo.get(record.id).joint_session is False
    repo.set_joint_session(record.id, True)
    repo.update(record.id, joint_session=False)
    repo.update(record.id, host="other")  # no change of the toggle: nothing told
    assert fake_engine.told == [(record.id, False), (record.id, True), (record.id, False)]
    with pytest.raises(EndpointError):
        repo.set_joint_session("missing", True)


def test_grants_give_a_role_and_the_standard_profile(db, secrets, users, fake_engine):
    access = Access(db)
    grants = Grants(db, Profiles(db))
    repo = Endpoints(db, secrets, fake_engine, access)
    alice = users.create("alice", "alice-password")
    admin = users.create("root", "root-password", is_admin=True)
    a = repo.create("a", "ssh", "h")
    b = repo.create("b", "ssh", "h")
    assert not access.may_join(alice, a.id)
    assert access.may_see(admin, a.id) and not access.may_see(admin, "missing")
    assert grants.grant(a.id, alice.id) is True
    assert grants.grant(a.id, alice.id) is False
    assert access.may_join(alice, a.id) and not access.may_join(alice, b.id)
    assert [e.name for e in repo.accessible(alice)] == ["a"]
    assert [e.name for e in repo.accessible(admin)] == ["a", "b"]
    assert [(e.principal.name, e.role.value) for e in grants.roles_on(a.id)] == [("alice", "user")]
    assert [(e.principal.name, e.profile.name) for e in grants.assignments_on(a.id)] == [("alice", "Standard")]
    with pytest.raises(AccessError, match="no such user"):
        grants.grant(a.id, "nobody")
    with pytest.raises(AccessError, match="no such endpoint"):
        grants.grant("nothing", alice.id)
    assert grants.revoke(a.id, alice.id) is True
    assert not access.may_join(alice, a.id)
    grants.grant(a.id, alice.id)
    repo.delete(a.id)
    assert repo.accessible(alice) == [] and grants.roles_on(a.id) == []


def test_grants_of_an_older_database_move_into_the_model(db, secrets, users, fake_engine):
    repo = Endpoints(db, secrets, fake_engine)
    alice = users.create("alice", "alice-password")
    a = repo.create("a", "ssh", "h")
    with db.begin() as conn:
        conn.execute(t_endpoint_access.insert().values(endpoint_id=a.id, user_id=alice.id))
    access = Access(db)
    grants = Grants(db, Profiles(db))
    assert grants.migrate_legacy_grants() == 1
    assert grants.migrate_legacy_grants() == 0  # idempotent: the old rows are gone
    facts = access.facts(alice, a.id)
    assert facts.role is AssetRole.USER and facts.profile.name == "Standard" and facts.profile.allows_web_session


def test_host_keys(repo):
    record = repo.create("a", "ssh", "h")
    assert repo.trust_first_host_key(record.id, KEY_A) is True
    assert repo.get(record.id).host_key == " ".join(KEY_A.split()[:2])  # comment dropped
    assert repo.trust_first_host_key(record.id, KEY_B) is False  # only the first key is trusted
    repo.note_changed_host_key(record.id, KEY_B)
    pending = repo.get(record.id)
    assert pending.host_key_fingerprint == host_key_fingerprint(KEY_A)
    assert pending.pending_host_key_fingerprint == host_key_fingerprint(KEY_B)
    assert repo.accept_pending_host_key(record.id) is True
    accepted = repo.get(record.id)
    assert accepted.host_key == KEY_B and accepted.pending_host_key is None
    assert repo.accept_pending_host_key(record.id) is False
    with pytest.raises(EndpointError):
        repo.trust_first_host_key(record.id, "not a key")


CERT_A = ":".join(f"{i:02X}" for i in range(32))  # an RDP certificate's SHA-256, as FreeRDP prints it
CERT_B = ":".join(f"{255 - i:02x}" for i in range(32))


def test_rdp_certificates_are_pinned_as_host_keys_are(repo):
    record = repo.create("w", "rdp", "h")
    assert record.port == 3389 and record.host_key is None
    assert repo.trust_first_host_key(record.id, CERT_A) is True
    assert repo.get(record.id).host_key == CERT_A.lower()
    assert repo.trust_first_host_key(record.id, CERT_B) is False
    repo.note_changed_host_key(record.id, CERT_B)
    pending = repo.get(record.id)
    assert pending.host_key_fingerprint == f"SHA-256 {CERT_A.lower()}"
    assert pending.pending_host_key_fingerprint == f"SHA-256 {CERT_B}"
    assert repo.accept_pending_host_key(record.id) is True
    assert repo.get(record.id).host_key == CERT_B
    for bad in ("aa:bb", CERT_A + ":00", CERT_A.replace(":", "")):
        with pytest.raises(EndpointError, match="SHA-256 fingerprint"):
            repo.note_changed_host_key(record.id, bad)
    assert repo.create("w2", "rdp", "h", host_key=CERT_A).host_key == CERT_A.lower()


def test_new_address_forgets_host_keys(repo):
    record = repo.create("a", "ssh", "h", host_key=KEY_A)
    repo.note_changed_host_key(record.id, KEY_B)
    assert repo.update(record.id, username="other").host_key is not None
    moved = repo.update(record.id, host="elsewhere")
    assert moved.host_key is None and moved.pending_host_key is None


def test_fingerprint_matches_openssh_format():
    fp = host_key_fingerprint(KEY_A)
    assert fp.startswith("ssh-ed25519 SHA256:") and not fp.endswith("=")
    assert host_key_fingerprint("garbage") is None and host_key_fingerprint(None) is None


# --- users --------------------------------------------------------------------------------


def test_users(users):
    alice = users.create("alice", "alice-password")
    assert alice == User(alice.id, "alice", False)
    assert users.authenticate("alice", "alice-password") == alice
    assert users.authenticate("alice", "wrong-password") is None
    assert users.authenticate("nobody", "alice-password") is None
    assert users.get(alice.id) == alice and users.get_by_name("alice") == alice
    assert users.get("missing") is None
    root = users.create("root", "root-password", is_admin=True)
    assert users.list() == [alice, root] and users.count() == 2
    with pytest.raises(AccountError, match="already exists"):
        users.create("alice", "another-password")
    with pytest.raises(AccountError, match="password"):
        users.create("bob", "short")
    with pytest.raises(AccountError, match="user name"):
        users.create("bad name", "long-enough-password")


def test_password_hash_is_argon2id_and_rehashed_when_parameters_change(db, users):
    from dashboard.repositories.tables import users as t_users

    users.create("alice", "alice-password")
    with db.connect() as conn:
        before = conn.execute(sa.select(t_users.c.password_hash)).scalar_one()
    assert before.startswith("$argon2id$") and "alice-password" not in before
    stronger = Users(db, PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.authenticate("alice", "alice-password") is not None
    with db.connect() as conn:
        after = conn.execute(sa.select(t_users.c.password_hash)).scalar_one()
    assert after != before and "m=2048,t=2" in after
