"""The account page and TOTP enrolment (issue 6's MFA, docs/access.md "Enrolling an authenticator").

- ``GET /account``: the signed-in user's name and whether an authenticator is enrolled; while an
  enrolment waits for its first token, its QR code (inline SVG) and its secret for manual entry;
  for administrators, every user's authenticator with a Reset button;
- ``POST /account/mfa/begin``: a new secret (``Authenticators.begin``), replacing any earlier one.
  Replacing an *enrolled* authenticator needs a current token from it, like removing it;
- ``POST /account/mfa/confirm``: the first token of the new authenticator; accepted, it is enrolled;
- ``POST /account/mfa/cancel``: drop an enrolment that was never confirmed;
- ``POST /account/mfa/remove``: remove the enrolled authenticator, with a current token from it
  (a stolen session cookie alone can neither remove nor replace it);
- ``POST /admin/users/{user_id}/mfa/reset``: administrators only; removes a user's authenticator
  (a lost phone), so that they can enrol again.

The secret leaves the database (encrypted there, bound to the user id) only inside the account
page, which is sent with ``Cache-Control: no-store``; it is never logged and never in an audit row
(nor is any token). Every change and every refusal is audited: ``mfa_enrol_begun``,
``mfa_enrolled``, ``mfa_enrol_refused``, ``mfa_enrol_cancelled``, ``mfa_removed``,
``mfa_remove_refused``, ``mfa_reset``, ``mfa_reset_refused``; a refusal with its ``reason``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import qrcode
import qrcode.image.svg
import trio
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.security.auth import Forbidden, require_user
from dashboard.services import services_of
from dashboard.web.http import flash, not_found, take_flash
from dashboard.web.templating import render
from engine.messages import Refused, User

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
TOKEN_FIELD = "token"

# what a refusal tells the user, by reason (the detail of check_totp is terser)
REFUSALS = {
    "mfa_invalid": "That code is not right. Type the 6 digits your authenticator shows now "
                   "(if it keeps failing, check that your phone's clock is set automatically).",
    "mfa_reused": "That code was already used. Wait for your authenticator to show the next one "
                  "(a new code every 30 seconds).",
}
NOT_WAITING = "No enrolment is waiting for a code: set up an authenticator first."
NOT_ENROLLED = "No authenticator is enrolled."


def qr_svg(uri: str) -> Markup:
    """The QR code of `uri` as an inline SVG (one path; 4 modules of quiet zone)."""
    code = qrcode.QRCode(box_size=10, border=4, image_factory=qrcode.image.svg.SvgPathImage)
    code.add_data(uri)
    code.make(fit=True)
    return Markup(code.make_image().to_string(encoding="unicode"))


def secret_of(uri: str) -> str:
    """The base32 secret of an otpauth:// URI."""
    return parse_qs(urlsplit(uri).query).get("secret", [""])[0]


def grouped(secret: str, size: int = 4) -> str:
    """``ABCDEFGH`` → ``ABCD EFGH``: easier to type into an authenticator by hand."""
    return " ".join(secret[i:i + size] for i in range(0, len(secret), size))


def _message(refused: Refused, not_there: str) -> str:
    if refused.reason.value == "mfa_required":
        return not_there
    return REFUSALS.get(refused.reason.value, refused.detail or "That code was refused.")


async def _token(request: Request) -> str:
    form = await request.form()
    return str(form.get(TOKEN_FIELD, ""))[:64]


# --- the page ----------------------------------------------------------------------------------


async def _page(request: Request, user: User, *, error: str | None = None, status_code: int = 200) -> Response:
    services = services_of(request)
    mfa = services.mfa

    def load() -> tuple[str, str | None, list[tuple[User, str]]]:
        status = mfa.status(user)
        uri = mfa.uri(user) if status == "unconfirmed" else None
        users = [(u, mfa.status(u)) for u in services.users.list()] if user.is_admin else []
        return status, uri, users

    status, uri, users = await trio.to_thread.run_sync(load)
    enrolment = None
    if uri is not None:
        enrolment = {"uri": uri, "qr": qr_svg(uri), "secret": grouped(secret_of(uri))}
    return await render(request, "account.html", {
        "status": status, "enrolment": enrolment, "users": users, "error": error,
        "flash": take_flash(request)}, status_code=status_code, headers=NO_STORE)


async def account(request: Request) -> Response:
    user = await require_user(request)
    return await _page(request, user)


def _back(request: Request) -> Response:
    return RedirectResponse(request.url_for("account"), status_code=303)


# --- the user's own authenticator ------------------------------------------------------------------


async def begin(request: Request) -> Response:
    """A new secret. Over an enrolled authenticator only with a current token from it: whoever
    could replace it without one could also take it away."""
    user = await require_user(request)
    services = services_of(request)
    mfa = services.mfa
    token = await _token(request)
    status = await trio.to_thread.run_sync(mfa.status, user)
    if status == "enrolled":
        answer = await trio.to_thread.run_sync(mfa.check, user, token, services.now())
        if isinstance(answer, Refused):
            services.audit_event("mfa_enrol_refused", user, None, reason=answer.reason.value, replacing=True,
                                 via="dashboard")
            return await _page(request, user, status_code=400, error=(
                "To replace your authenticator, type a current code from it. "
                + _message(answer, NOT_ENROLLED)))
    await trio.to_thread.run_sync(mfa.begin, user, services.now())
    services.audit_event("mfa_enrol_begun", user, None, replacing=status == "enrolled", via="dashboard")
    return _back(request)


async def confirm(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    token = await _token(request)
    answer = await trio.to_thread.run_sync(
        lambda: services.mfa.check(user, token, services.now(), confirming=True))
    if isinstance(answer, Refused):
        services.audit_event("mfa_enrol_refused", user, None, reason=answer.reason.value, via="dashboard")
        return await _page(request, user, error=_message(answer, NOT_WAITING), status_code=400)
    services.audit_event("mfa_enrolled", user, None, via="dashboard")
    flash(request, "Your authenticator is enrolled: sessions that require MFA will ask for its code.")
    return _back(request)


async def cancel(request: Request) -> Response:
    """Drop an enrolment that was never confirmed (an enrolled authenticator needs a token to go)."""
    user = await require_user(request)
    services = services_of(request)
    mfa = services.mfa

    def drop() -> bool:
        return mfa.status(user) == "unconfirmed" and mfa.remove(user.id)

    if await trio.to_thread.run_sync(drop):
        services.audit_event("mfa_enrol_cancelled", user, None, via="dashboard")
        flash(request, "Enrolment cancelled.")
    return _back(request)


async def remove(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    mfa = services.mfa
    token = await _token(request)
    answer = await trio.to_thread.run_sync(mfa.check, user, token, services.now())
    if isinstance(answer, Refused):
        services.audit_event("mfa_remove_refused", user, None, reason=answer.reason.value, via="dashboard")
        return await _page(request, user, status_code=400, error=(
            "To remove your authenticator, type a current code from it. " + _message(answer, NOT_ENROLLED)))
    await trio.to_thread.run_sync(mfa.remove, user.id)
    services.audit_event("mfa_removed", user, None, via="dashboard")
    flash(request, "Your authenticator was removed.")
    return _back(request)


# --- administrators ------------------------------------------------------------------------------


async def reset(request: Request) -> Response:
    """An administrator removes a user's authenticator (a lost phone); the user enrols again."""
    admin = await require_user(request)
    services = services_of(request)
    user_id = request.path_params["user_id"][:128]
    if not admin.is_admin:
        services.audit_event("mfa_reset_refused", admin, None, reason="not_administrator", user_id=user_id,
                             via="dashboard")
        raise Forbidden("Only an administrator may reset someone's authenticator.")
    target: Any = await trio.to_thread.run_sync(services.users.get, user_id)
    if target is None:
        return await not_found(request, "user")
    removed = await trio.to_thread.run_sync(services.mfa.remove, target.id)
    services.audit_event("mfa_reset", admin, None, user=target.name, user_id=target.id, removed=removed,
                         via="dashboard")
    flash(request, f"{target.name}'s authenticator was reset: they can enrol a new one."
           if removed else f"{target.name} had no authenticator.")
    return _back(request)


routes = [
    Route("/account", account, methods=["GET"], name="account"),
    Route("/account/mfa/begin", begin, methods=["POST"], name="account_mfa_begin"),
    Route("/account/mfa/confirm", confirm, methods=["POST"], name="account_mfa_confirm"),
    Route("/account/mfa/cancel", cancel, methods=["POST"], name="account_mfa_cancel"),
    Route("/account/mfa/remove", remove, methods=["POST"], name="account_mfa_remove"),
    Route("/admin/users/{user_id}/mfa/reset", reset, methods=["POST"], name="admin_mfa_reset"),
]
