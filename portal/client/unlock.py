"""The room's "type the password" form for a kept password-protected upload.

Only the POST lives here; the upload page shows the form when
:func:`portal.opening.can_open` says so.  The password goes from the form
to :func:`portal.opening.open_upload` and nowhere else (never logged,
flashed, echoed back or stored).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, redirect, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext

from .. import opening
from ..messages import unlock_text
from ..unlock import MAX_PASSWORD, UnlockError
from ..web.base import remote_addr, services
from .views import current_client, get_room_upload


def init(app: Flask) -> None:
    @app.route("/uploads/<upload_id>/open", methods=["POST"])
    def upload_open(upload_id: str) -> Any:
        svc = services()
        upload = get_room_upload(svc, upload_id)  # another company's id: 404
        user = current_client(svc)
        back = url_for("upload_detail", upload_id=upload.id)
        password = request.form.get("password", "")[:MAX_PASSWORD + 1]
        try:
            new_ids = opening.open_upload(svc, user, upload.id, password, remote_addr())
        except opening.WrongPasswordError as exc:
            if exc.left:
                flash(unlock_text("wrong_password") + " " + ngettext(
                    "%(num)d attempt left.", "%(num)d attempts left.", exc.left), "error")
            else:
                flash(unlock_text("attempts_exhausted"), "error")
            return redirect(back, 303)
        except UnlockError as exc:
            flash(unlock_text(exc.code), "error")
            return redirect(back, 303)
        finally:
            password = ""
        if not new_ids:
            flash(unlock_text("nothing_inside"), "error")
            return redirect(back, 303)
        flash(_("The file was opened with its password. What was inside is now being checked "
                "for viruses like any other upload; the password-protected copy was deleted "
                "and the password was not kept."), "success")
        if len(new_ids) == 1:
            return redirect(url_for("upload_detail", upload_id=new_ids[0]), 303)
        return redirect(url_for("index"), 303)


__all__ = ["init"]
