"""RFB 3.8 (RFC 6143) without I/O: the constants, VNC authentication, and the client → server
messages, parsed and built in one place.

Two parts of cosession speak RFB, and both use this module:

- the VNC endpoint connection (`protocols.vnc`) is a *client* of a VNC server: it builds the
  client messages, and checks the controller's input (which arrives as client messages from
  the browser) before it reaches the server;
- the gateway is a *server* to each participant's browser (noVNC): `BrowserLeg` answers the
  handshake (security type None: the websocket is already authenticated and authorised) and
  parses what the browser sends, so that the gateway can forward the controller's key,
  pointer, clipboard and resize messages and refuse a viewer's.

The server → client FramebufferUpdate the browsers receive is written by the engine's display
model (`engine.display`), since its bytes are the session's frames; what a VNC server sends is
read by `protocols.rfb_decode`; a browser's side in Python is `protocols.rfb_browser`.

Everything here raises `RfbError` on a malformed message and never reads past what it was given.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VERSION_3_8 = b"RFB 003.008\n"
MAX_CUT_TEXT = 1 << 20  # a clipboard text longer than this is refused, either way
MAX_SIDE = 16384  # a desktop wider or taller than this is an error, not a desktop
MAX_SCREENS = 16  # ExtendedDesktopSize screens in one SetDesktopSize


class RfbError(Exception):
    """The peer broke the protocol; the text says how (and never holds a secret)."""


class Security(enum.IntEnum):
    INVALID = 0
    NONE = 1
    VNC_AUTH = 2
    VENCRYPT = 19


class Encoding(enum.IntEnum):
    RAW = 0
    COPY_RECT = 1
    TIGHT = 7
    ZRLE = 16
    TIGHT_PNG = -260
    # pseudo-encodings
    DESKTOP_SIZE = -223
    LAST_RECT = -224
    CURSOR = -239
    DESKTOP_NAME = -307
    EXTENDED_DESKTOP_SIZE = -308
    QUALITY_LEVEL_0 = -32  # ... -23 for quality 9: Tight sends JPEG only if one of these is asked for
    COMPRESS_LEVEL_0 = -256  # ... -247 for level 9


class ClientType(enum.IntEnum):
    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    CLIENT_FENCE = 248
    SET_DESKTOP_SIZE = 251
    QEMU = 255


class ServerType(enum.IntEnum):
    FRAMEBUFFER_UPDATE = 0
    SET_COLOUR_MAP_ENTRIES = 1
    BELL = 2
    SERVER_CUT_TEXT = 3
    END_OF_CONTINUOUS_UPDATES = 150
    SERVER_FENCE = 248


# --- pixel format -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PixelFormat:
    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 0
    green_shift: int = 8
    blue_shift: int = 16

    _STRUCT = struct.Struct(">BBBBHHHBBB3x")

    def pack(self) -> bytes:
        return self._STRUCT.pack(self.bits_per_pixel, self.depth, self.big_endian, self.true_colour,
                                 self.red_max, self.green_max, self.blue_max,
                                 self.red_shift, self.green_shift, self.blue_shift)

    @classmethod
    def unpack(cls, data: bytes) -> "PixelFormat":
        bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs = cls._STRUCT.unpack(data)
        return cls(bpp, depth, bool(big), bool(true), rmax, gmax, bmax, rs, gs, bs)


# The one pixel format cosession uses on both legs. Little-endian with red in the lowest byte:
# a 32-bit pixel is the bytes R, G, B, 0 in memory, Tight's TPIXEL and ZRLE's CPIXEL are R, G, B,
# so every decoder reads pixels with numpy without shuffling bytes. It is also exactly the
# format noVNC asks for, so the frames written once by the display model suit every browser.
RGBX = PixelFormat()


# --- VNC authentication -------------------------------------------------------------------------

_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
# The fixed key with which vncpasswd obfuscates a password file (VNC's d3des key schedule reads
# each key byte's bits in reverse order, like the password's: see `_des_key`).
_OBFUSCATION_KEY = bytes((23, 82, 107, 6, 35, 78, 88, 7))


def _des_key(key: bytes) -> bytes:
    """VNC's DES key from up to 8 bytes: zero-padded, each byte bit-reversed (VNC's d3des takes
    the bits of a key byte in the opposite order to the DES standard), tripled for TripleDES,
    which with three equal keys is single DES."""
    key = key[:8].ljust(8, b"\0").translate(_BIT_REVERSED)
    return key * 3


def _des_encrypt(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(TripleDES(_des_key(key)), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VncAuth challenge: the 16-byte challenge, DES-encrypted with the first
    8 bytes of the password (latin-1, as VNC servers read it) as the key."""
    if len(challenge) != 16:
        raise RfbError("a VNC authentication challenge has 16 bytes")
    return _des_encrypt(password.encode("latin-1", "replace"), challenge)


def obfuscated_password(password: str) -> bytes:
    """What `vncpasswd -f` writes for `password`: the file Xvnc's -rfbauth reads."""
    return _des_encrypt(_OBFUSCATION_KEY, password.encode("latin-1", "replace")[:8].ljust(8, b"\0"))


# --- client → server messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPixelFormat:
    pixel_format: PixelFormat


@dataclass(frozen=True, slots=True)
class SetEncodings:
    encodings: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FramebufferUpdateRequest:
    incremental: bool
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class KeyEvent:
    down: bool
    key: int  # an X keysym


@dataclass(frozen=True, slots=True)
class PointerEvent:
    buttons: int  # bit 0 left, 1 middle, 2 right, 3/4 wheel up/down, ...
    x: int
    y: int


@dataclass(frozen=True, slots=True, repr=False)
class ClientCutText:
    text: bytes  # latin-1 per RFC 6143

    def __repr__(self) -> str:  # clipboard contents stay out of logs
        return f"ClientCutText(<{len(self.text)} bytes>)"


@dataclass(frozen=True, slots=True)
class Screen:
    id: int
    x: int
    y: int
    width: int
    height: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SetDesktopSize:
    width: int
    height: int
    screens: tuple[Screen, ...]


@dataclass(frozen=True, slots=True)
class EnableContinuousUpdates:
    enable: bool
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ClientFence:
    flags: int
    payload: bytes


ClientMessage = (SetPixelFormat | SetEncodings | FramebufferUpdateRequest | KeyEvent | PointerEvent
                 | ClientCutText | SetDesktopSize | EnableContinuousUpdates | ClientFence)

# What reaches the desktop when the controller sends it (and is refused from a viewer).
INPUT_MESSAGES = (KeyEvent, PointerEvent, ClientCutText, SetDesktopSize)

_U8 = struct.Struct(">B")
_KEY = struct.Struct(">BBxxI")
_POINTER = struct.Struct(">BBHH")
_CUT = struct.Struct(">BxxxI")
_FBUR = struct.Struct(">BBHHHH")
_ENCODINGS = struct.Struct(">BxH")
_DESKTOP = struct.Struct(">BxHHBx")
_SCREEN = struct.Struct(">IHHHHI")
_CONTINUOUS = struct.Struct(">BBHHHH")
_FENCE = struct.Struct(">BxxxIB")


def pack(message: ClientMessage) -> bytes:
    """The wire bytes of one client message."""
    match message:
        case KeyEvent(down=down, key=key):
            return _KEY.pack(ClientType.KEY_EVENT, down, key)
        case PointerEvent(buttons=buttons, x=x, y=y):
            return _POINTER.pack(ClientType.POINTER_EVENT, buttons, x, y)
        case ClientCutText(text=text):
            return _CUT.pack(ClientType.CLIENT_CUT_TEXT, len(text)) + text
        case FramebufferUpdateRequest(incremental=inc, x=x, y=y, width=w, height=h):
            return _FBUR.pack(ClientType.FRAMEBUFFER_UPDATE_REQUEST, inc, x, y, w, h)
        case SetEncodings(encodings=encodings):
            return (_ENCODINGS.pack(ClientType.SET_ENCODINGS, len(encodings))
                    + struct.pack(f">{len(encodings)}i", *encodings))
        case SetPixelFormat(pixel_format=fmt):
            return b"\0\0\0\0" + fmt.pack()
        case SetDesktopSize(width=w, height=h, screens=screens):
            return (_DESKTOP.pack(ClientType.SET_DESKTOP_SIZE, w, h, len(screens))
                    + b"".join(_SCREEN.pack(s.id, s.x, s.y, s.width, s.height, s.flags) for s in screens))
        case EnableContinuousUpdates(enable=enable, x=x, y=y, width=w, height=h):
            return _CONTINUOUS.pack(ClientType.ENABLE_CONTINUOUS_UPDATES, enable, x, y, w, h)
        case ClientFence(flags=flags, payload=payload):
            return _FENCE.pack(ClientType.CLIENT_FENCE, flags, len(payload)) + payload
    raise TypeError(f"not a client message: {type(message).__name__}")


class ClientMessageReader:
    """Splits a client → server byte stream into messages. Feed it bytes as they come (a
    websocket message may hold several messages, or part of one); it keeps the incomplete tail.

    A message that is malformed, unknown or too large raises `RfbError`: the stream cannot be
    resynchronised after that, so the caller closes it."""

    def __init__(self, max_cut_text: int = MAX_CUT_TEXT) -> None:
        self._buffer = bytearray()
        self._max_cut_text = max_cut_text

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[ClientMessage, bytes]]:
        """Every complete message in the stream so far, each with its own wire bytes."""
        self._buffer += data
        out: list[tuple[ClientMessage, bytes]] = []
        while self._buffer:
            parsed = self._parse_one()
            if parsed is None:
                break
            message, size = parsed
            out.append((message, bytes(self._buffer[:size])))
            del self._buffer[:size]
        return out

    def _parse_one(self) -> tuple[ClientMessage, int] | None:
        buf = self._buffer
        kind = buf[0]
        if kind == ClientType.KEY_EVENT:
            if len(buf) < 8:
                return None
            _, down, key = _KEY.unpack_from(buf)
            if down > 1:
                raise RfbError("KeyEvent down-flag must be 0 or 1")
            return KeyEvent(bool(down), key), 8
        if kind == ClientType.POINTER_EVENT:
            if len(buf) < 6:
                return None
            _, buttons, x, y = _POINTER.unpack_from(buf)
            return PointerEvent(buttons, x, y), 6
        if kind == ClientType.FRAMEBUFFER_UPDATE_REQUEST:
            if len(buf) < 10:
                return None
            _, inc, x, y, w, h = _FBUR.unpack_from(buf)
            if inc > 1:
                raise RfbError("FramebufferUpdateRequest incremental-flag must be 0 or 1")
            return FramebufferUpdateRequest(bool(inc), x, y, w, h), 10
        if kind == ClientType.CLIENT_CUT_TEXT:
            if len(buf) < 8:
                return None
            _, length = _CUT.unpack_from(buf)
            if length & 0x80000000:
                raise RfbError("extended clipboard messages are not supported")
            if length > self._max_cut_text:
                raise RfbError(f"ClientCutText of {length} bytes (at most {self._max_cut_text})")
            if len(buf) < 8 + length:
                return None
            return ClientCutText(bytes(buf[8:8 + length])), 8 + length
        if kind == ClientType.SET_ENCODINGS:
            if len(buf) < 4:
                return None
            _, count = _ENCODINGS.unpack_from(buf)
            if count > 1024:
                raise RfbError(f"SetEncodings with {count} encodings")
            size = 4 + 4 * count
            if len(buf) < size:
                return None
            return SetEncodings(struct.unpack_from(f">{count}i", buf, 4)), size
        if kind == ClientType.SET_PIXEL_FORMAT:
            if len(buf) < 20:
                return None
            fmt = PixelFormat.unpack(bytes(buf[4:20]))
            if fmt.bits_per_pixel not in (8, 16, 32) or not fmt.true_colour:
                raise RfbError("SetPixelFormat: only true-colour 8, 16 or 32 bits per pixel")
            return SetPixelFormat(fmt), 20
        if kind == ClientType.SET_DESKTOP_SIZE:
            if len(buf) < 8:
                return None
            _, w, h, count = _DESKTOP.unpack_from(buf)
            if not 0 < count <= MAX_SCREENS:
                raise RfbError(f"SetDesktopSize with {count} screens")
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                raise RfbError(f"SetDesktopSize to {w}x{h}")
            size = 8 + 16 * count
            if len(buf) < size:
                return None
            screens = tuple(Screen(*_SCREEN.unpack_from(buf, 8 + 16 * i)) for i in range(count))
            return SetDesktopSize(w, h, screens), size
        if kind == ClientType.ENABLE_CONTINUOUS_UPDATES:
            if len(buf) < 10:
                return None
            _, enable, x, y, w, h = _CONTINUOUS.unpack_from(buf)
            return EnableContinuousUpdates(bool(enable), x, y, w, h), 10
        if kind == ClientType.CLIENT_FENCE:
            if len(buf) < 9:
                return None
            _, flags, length = _FENCE.unpack_from(buf)
            if length > 64:
                raise RfbError("a fence payload has at most 64 bytes")
            if len(buf) < 9 + length:
                return None
            return ClientFence(flags, bytes(buf[9:9 + length])), 9 + length
        raise RfbError(f"unknown client message type {kind}")


# --- the browser leg: cosession as an RFB server to noVNC ---------------------------------------


class LegState(enum.Enum):
    VERSION = "version"  # sent ProtocolVersion, waiting for the client's
    SECURITY = "security"  # sent the security types, waiting for the choice
    INIT = "init"  # sent SecurityResult, waiting for ClientInit
    READY = "ready"  # sent ServerInit: framebuffer updates may flow


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The browser sent ClientInit; the caller answers with `server_init(width, height)`."""


# Every encoding a browser must accept for the frames cosession writes (engine.display).
REQUIRED_BROWSER_ENCODINGS = frozenset({Encoding.TIGHT, Encoding.TIGHT_PNG, Encoding.COPY_RECT,
                                        Encoding.DESKTOP_SIZE})  # the pointer is drawn in, not a Cursor


class BrowserLeg:
    """The server side of one browser's RFB stream, without I/O.

    `greeting()` is the first thing sent. Then every binary message from the browser goes to
    `receive()`, which returns what to send back during the handshake and, once the handshake
    is done, the browser's messages. The pixel format and encodings a browser may ask for are
    checked here: the frames every participant receives are the same bytes, so a browser that
    cannot take them is refused rather than served differently."""

    def __init__(self, max_cut_text: int = MAX_CUT_TEXT) -> None:
        self.state = LegState.VERSION
        self._buffer = bytearray()
        self._reader = ClientMessageReader(max_cut_text)
        self.encodings: frozenset[int] = frozenset()

    @staticmethod
    def greeting() -> bytes:
        return VERSION_3_8

    def receive(self, data: bytes) -> tuple[bytes, list[ClientMessage | HandshakeDone]]:
        """(bytes to send back, events): `HandshakeDone` once, then client messages."""
        if self.state is LegState.READY:
            return b"", self._messages(data)
        self._buffer += data
        reply = bytearray()
        events: list[ClientMessage | HandshakeDone] = []
        if self.state is LegState.VERSION:
            if len(self._buffer) < 12:
                return b"", []
            version = bytes(self._buffer[:12])
            del self._buffer[:12]
            if version != VERSION_3_8:
                raise RfbError("the browser must speak RFB 3.8")
            reply += bytes((1, Security.NONE))
            self.state = LegState.SECURITY
        if self.state is LegState.SECURITY:
            if not self._buffer:
                return bytes(reply), events
            choice = self._buffer.pop(0)
            if choice != Security.NONE:
                raise RfbError(f"security type {choice} was not offered")
            reply += struct.pack(">I", 0)  # SecurityResult: OK
            self.state = LegState.INIT
        if self.state is LegState.INIT:
            if not self._buffer:
                return bytes(reply), events
            self._buffer.pop(0)  # the shared flag: every participant shares, whatever it says
            self.state = LegState.READY
            events.append(HandshakeDone())
            rest, self._buffer = bytes(self._buffer), bytearray()
            events += self._messages(rest)
        return bytes(reply), events

    def _messages(self, data: bytes) -> list[ClientMessage | HandshakeDone]:
        out: list[ClientMessage | HandshakeDone] = []
        for message, _ in self._reader.feed(data):
            if isinstance(message, SetPixelFormat) and message.pixel_format != RGBX:
                raise RfbError("the browser asked for a pixel format other than 32-bit RGBX")
            if isinstance(message, SetEncodings):
                self.encodings = frozenset(message.encodings)
                missing = REQUIRED_BROWSER_ENCODINGS - self.encodings
                if missing:
                    names = ", ".join(sorted(Encoding(e).name for e in missing))
                    raise RfbError(f"the browser does not accept {names}")
            out.append(message)
        return out

    @staticmethod
    def server_init(width: int, height: int, name: str) -> bytes:
        raw = name.encode("utf-8")[:256]
        return struct.pack(">HH", width, height) + RGBX.pack() + struct.pack(">I", len(raw)) + raw
