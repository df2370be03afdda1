"""VncConnection against a real TigerVNC Xvnc with real X clients (tests/fixtures/xvnc.py).

The desktop the connection decodes (through the display model, as a session keeps it) is
compared with the X server's own framebuffer, read with xwd: exactly for the lossless
encodings, within a JPEG tolerance for Tight with JPEG."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import trio

from protocols import rfb
from protocols.rfb import Encoding
from protocols.vnc import ENCODINGS, VncConnection
from tests.fixtures.xvnc import DisplayRecorder, start_xvnc


def connect(bridge, server, **kwargs) -> tuple[VncConnection, DisplayRecorder]:
    events = DisplayRecorder()
    password = kwargs.pop("password", server.password)
    if kwargs.pop("unix", False):
        conn = VncConnection(bridge, password=password, socket_path=server.socket_path, **kwargs)
    else:
        conn = VncConnection(bridge, server.host, server.port, password, **kwargs)
    conn.open(events, 80, 24)
    return conn, events


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(mean absolute difference, pixels differing by more than 48 in any channel)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(diff.mean()), int((diff.max(axis=2) > 48).sum())


async def wait_same(events: DisplayRecorder, server, *, exact: bool, timeout: float = 10.0) -> None:
    """Until the model shows what the X server shows (the server may still be painting)."""
    last = None

    def same() -> bool:
        nonlocal last
        model = events.model.snapshot()
        if model.shape != (server.height, server.width, 3):
            return False
        truth = server.screenshot()
        last = difference(model, truth)
        return bool((model == truth).all()) if exact else last[0] < 3.0 and last[1] < 200

    with trio.move_on_after(timeout):
        while not same():
            await events.wait_for(lambda n=events.updates: events.updates > n, timeout)
        return
    raise AssertionError(f"the model never matched the server's framebuffer: {last}")


async def test_mirrors_the_desktop_with_tight_jpeg(vnc_bridge, xvnc):
    xvnc.run("xterm", "-geometry", "80x24+10+10", "-bg", "navy", "-fg", "yellow",
             "-e", "sh", "-c", "ls -l /usr/bin | head -40; sleep 60")
    xvnc.run("xclock", "-geometry", "200x200+700+300", "-update", "1")
    xvnc.wait_for_window("xclock")
    conn, events = connect(vnc_bridge, xvnc)
    await events.wait_for(lambda: "opened" in events.kinds())
    assert f"({xvnc.width}x{xvnc.height})" in events.events[0][1]
    await wait_same(events, xvnc, exact=False)
    assert events.model.rects_passed + events.model.rects_encoded > 0
    conn.close()
    assert events.ended is None  # close() reports nothing


@pytest.mark.parametrize("encoding", [Encoding.ZRLE, Encoding.RAW, Encoding.TIGHT])
async def test_lossless_encodings_match_exactly(vnc_bridge, xvnc, encoding):
    """ZRLE, Raw and Tight without JPEG (quality pseudo-encodings are what enable JPEG: a
    Tight without them is lossless) give exactly the server's pixels."""
    xvnc.run("xterm", "-geometry", "60x20+30+40", "-bg", "white", "-fg", "black",
             "-e", "sh", "-c", "seq 1 200 | paste - - - - - - - -; sleep 60")
    xvnc.run("xclock", "-geometry", "160x160+600+200")
    xvnc.wait_for_window("xclock")
    pseudo = tuple(e for e in ENCODINGS if e < 0)
    conn = VncConnection(vnc_bridge, xvnc.host, xvnc.port, xvnc.password,
                         encodings=(encoding, *pseudo))
    conn._encodings = tuple(e for e in conn._encodings  # noqa: SLF001 - no quality: no JPEG
                            if not (Encoding.QUALITY_LEVEL_0 <= e <= Encoding.QUALITY_LEVEL_0 + 9))
    events = DisplayRecorder()
    conn.open(events, 80, 24)
    await wait_same(events, xvnc, exact=True)
    assert events.model.rects_passed == 0  # nothing came as JPEG
    conn.close()


async def test_controller_input_reaches_the_x_server(vnc_bridge, xvnc):
    directory = Path(tempfile.mkdtemp(prefix="cosession-vnc-input-"))
    try:
        marker = directory / "typed"
        xvnc.run("xterm", "-T", "input-test", "-geometry", "80x24+0+0", "-e", "sh")
        window = xvnc.wait_for_window("input-test")
        conn, events = connect(vnc_bridge, xvnc)
        await events.wait_for(lambda: "opened" in events.kinds())
        # a click into the xterm gives it the focus, then the keys of a command
        click = rfb.pack(rfb.PointerEvent(0, 100, 100)) + rfb.pack(rfb.PointerEvent(1, 100, 100)) \
            + rfb.pack(rfb.PointerEvent(0, 100, 100))
        conn.send_input(click)
        keys = b"".join(rfb.pack(rfb.KeyEvent(down, ord(ch))) for ch in f"touch {marker}"
                        for down in (True, False))
        keys += rfb.pack(rfb.KeyEvent(True, 0xFF0D)) + rfb.pack(rfb.KeyEvent(False, 0xFF0D))  # Return
        conn.send_input(keys[:7])  # split anywhere: the connection reassembles messages
        conn.send_input(keys[7:])
        with trio.fail_after(10):
            while not marker.exists():
                await trio.sleep(0.02)  # polling the file system for the shell's work
        assert window
        conn.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_over_a_unix_socket(vnc_bridge):
    with start_xvnc(640, 480, unix_socket=True) as server:
        conn, events = connect(vnc_bridge, server, unix=True)
        await events.wait_for(lambda: "opened" in events.kinds())
        await wait_same(events, server, exact=False)
        conn.close()


async def test_wrong_password_is_final_and_never_shown(vnc_bridge, xvnc):
    conn, events = connect(vnc_bridge, xvnc, password="not-the-password-1234")
    await events.wait_for(lambda: events.ended is not None)
    kind, detail, retryable = events.ended
    assert kind == "failed" and not retryable
    assert detail.startswith(f"VNC authentication to {xvnc.host}:{xvnc.port} failed")
    assert "not-the" not in detail and xvnc.password not in detail


async def test_no_password_for_a_vncauth_server_is_final(vnc_bridge, xvnc):
    conn, events = connect(vnc_bridge, xvnc, password=None)
    await events.wait_for(lambda: events.ended is not None)
    assert events.ended == ("failed", f"{xvnc.host}:{xvnc.port} asks for a VNC password and none was given", False)


async def test_server_killed_is_a_retryable_failure(vnc_bridge, xvnc):
    conn, events = connect(vnc_bridge, xvnc)
    await events.wait_for(lambda: events.updates > 0)
    xvnc.stop()
    await events.wait_for(lambda: events.ended is not None)
    kind, detail, retryable = events.ended
    assert kind == "failed" and retryable, events.ended
    # and the retry finds nothing listening
    events2 = DisplayRecorder()
    conn.open(events2, 80, 24)
    await events2.wait_for(lambda: events2.ended is not None)
    assert events2.ended == ("failed", f"connection to {xvnc.host}:{xvnc.port} refused", True)


async def test_desktop_size_is_asked_of_a_resizable_server(vnc_bridge, xvnc):
    conn, events = connect(vnc_bridge, xvnc, desktop_size=(800, 600))
    await events.wait_for(lambda: (events.model.width, events.model.height) == (800, 600))
    assert events.model.resizable
    # the controller's browser resizes it again, through its input
    conn.send_input(rfb.pack(rfb.SetDesktopSize(1024, 700, (rfb.Screen(0, 0, 0, 1024, 700),))))
    await events.wait_for(lambda: (events.model.width, events.model.height) == (1024, 700))
    conn.close()


@pytest.mark.skipif(not shutil.which("vncpasswd"), reason="needs vncpasswd (tigervnc-tools)")
def test_password_file_is_what_vncpasswd_writes():
    for password in ("secret", "12345678", "longer-than-eight", "ü"):
        made = subprocess.run(["vncpasswd", "-f"], input=password.encode("latin-1") + b"\n",
                              capture_output=True, check=True).stdout
        assert rfb.obfuscated_password(password) == made, password


def self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xvnc-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("security", ["TLSVnc", "X509Vnc", "TLSNone", "TLSVnc,VncAuth"])
async def test_vencrypt_tls_is_chosen_where_offered(vnc_bridge, security, tmp_path, caplog):
    extra: tuple[str, ...] = ()
    if "X509" in security:
        cert, key = self_signed(tmp_path)
        extra = ("-X509Cert", str(cert), "-X509Key", str(key))
    caplog.set_level("INFO", logger="protocols.vencrypt")
    with start_xvnc(640, 480, security=security, extra=extra) as server:
        server.run("xclock", "-geometry", "200x200+10+10")
        server.wait_for_window("xclock")
        conn, events = connect(vnc_bridge, server)
        await events.wait_for(lambda: "opened" in events.kinds() or events.ended is not None)
        assert events.ended is None, events.ended
        await wait_same(events, server, exact=False)
        conn.close()
    subtype = {"TLSVnc": 258, "X509Vnc": 261, "TLSNone": 257, "TLSVnc,VncAuth": 258}[security]
    assert any(f"VeNCrypt subtype {subtype}, TLSv" in r.getMessage() for r in caplog.records)


async def test_vencrypt_with_a_wrong_password_is_final(vnc_bridge):
    with start_xvnc(320, 240, security="TLSVnc") as server:
        conn, events = connect(vnc_bridge, server, password="wrong-one")
        await events.wait_for(lambda: events.ended is not None)
        kind, detail, retryable = events.ended
        assert kind == "failed" and not retryable and "VNC authentication" in detail and "wrong-one" not in detail


async def test_an_actor_that_falls_behind_stops_the_requests(vnc_bridge, xvnc):
    """Updates the actor has not applied are bounded: the connection asks the server for no
    more (the server merges what changes meanwhile) until the actor catches up."""
    from protocols.vnc import UPDATES_IN_FLIGHT

    xvnc.run("xterm", "-geometry", "60x20+0+0", "-e", "sh", "-c", "while :; do date +%N; done")
    held: list = []

    class Holding(DisplayRecorder):
        def display(self, items, applied=None):
            super().display(items, None)
            if applied is not None:
                held.append(applied)

    events = Holding()
    conn = VncConnection(vnc_bridge, xvnc.host, xvnc.port, xvnc.password)
    conn.open(events, 80, 24)
    with trio.move_on_after(5):
        await events.wait_for(lambda: len(held) >= UPDATES_IN_FLIGHT + 1)
    assert len(held) >= UPDATES_IN_FLIGHT + 1, (len(held), events.updates, events.events)
    with trio.move_on_after(1.0):  # a busy desktop: were the requests going on, updates would pour in
        await events.wait_for(lambda: len(held) > UPDATES_IN_FLIGHT + 1, 1.0)
    assert len(held) == UPDATES_IN_FLIGHT + 1
    for applied in held[:]:
        applied()
    await events.wait_for(lambda: len(held) > UPDATES_IN_FLIGHT + 2)
    conn.close()
