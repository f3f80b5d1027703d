"""Words for statuses and refusal reasons.  The texts live in the catalogue."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l

STATUS_LABELS = {
    "received": _l("Received"),
    "scanning": _l("Scanning"),
    "clean": _l("Scanned, waiting for the office"),
    "infected": _l("Virus found"),
    "refused": _l("Not accepted"),
    "vaulted": _l("In the office vault"),
    "disposed": _l("Disposed"),
}

REASONS = {
    "malware": _l("A virus or other malicious content was found. The file was deleted "
                  "and did not reach the office. Please check the computer it came from."),
    "encrypted": _l("The file is protected by a password, so it cannot be checked for "
                    "viruses. kinko already encrypts everything you upload; please save "
                    "the file without a password and upload it again."),
    "scan_limits": _l("The file is too large or too complex to be checked for viruses. "
                      "Please split it into smaller files."),
    "empty": _l("The file is empty."),
    "too_large": _l("The file is larger than the maximum size allowed."),
    "type_not_allowed": _l("This type of file is not accepted. Please upload Excel "
                           "(xlsx, xls), CSV, ODS, PDF, JPEG or PNG files."),
    "extension_mismatch": _l("The file's name does not match its contents (for example, "
                             "a PDF named .xlsx). Please check the file and upload it again."),
    "archive_limits": _l("The file contains too many parts or unsafe names."),
    "malformed": _l("The file appears to be damaged and cannot be opened."),
    "damaged": _l("The file was damaged while being stored. Please upload it again."),
    "invalid_purpose": _l("Please choose a purpose of use."),
    "truncated": _l("The upload was interrupted before the whole file arrived. Nothing was "
                    "kept; please upload the file again."),
    "no_file": _l("Please choose a file to upload."),
    "one_file": _l("Please upload one file at a time."),
    "bad_filename": _l("The file name could not be read."),
    "not_clean": _l("Only files that were scanned clean can be moved into the vault."),
    "not_vaulted": _l("The file is not in the vault."),
    "not_found": _l("Not found."),
    "storage_full": _l("There is not enough storage space to receive this file right now. "
                       "Nothing was kept; please try again later or contact the office."),
    "storage_unavailable": _l("The file could not be stored because storage is unavailable "
                              "right now. Nothing was kept; please try again in a few "
                              "minutes."),
}


# Opening a password-protected upload with its password (portal.opening).
UNLOCK_REASONS = {
    "wrong_password": _l("The password is not correct. Please check it and try again."),
    "attempts_exhausted": _l("The password was wrong too many times, so the "
                             "password-protected file was deleted. Please save the file "
                             "without a password and upload it again."),
    "no_password": _l("Please enter the file's password."),
    "not_available": _l("This file can no longer be opened with a password (it was opened "
                        "already, or it was kept for 24 hours only). Please save the file "
                        "without a password and upload it again."),
    "too_large": _l("The file is too large to be opened with a password here (at most "
                    "200 MB). Please save it without a password and upload it again."),
    "too_many_entries": _l("The ZIP file holds too many files (at most 20). Please upload "
                           "the files separately, without a password."),
    "odf_unsupported": _l("Password-protected ODF files (such as .ods) cannot be opened "
                          "here. Please save the file without a password (in LibreOffice: "
                          "File › Save As, with Save with password left unticked) and "
                          "upload it again."),
    "unsupported": _l("This file cannot be opened with a password here. Please save it "
                      "without a password and upload it again."),
    "malformed": _l("The file appears to be damaged and cannot be opened."),
    "damaged": _l("The file was damaged while being stored. Please upload it again."),
    "nothing_inside": _l("The file had nothing inside that could be kept."),
    "busy": _l("Another file is being opened with its password right now. Please try "
               "again in a minute."),
}


def unlock_text(code: str) -> str:
    text = UNLOCK_REASONS.get(code) or UNLOCK_REASONS["unsupported"]
    return str(text)


def reason_text(code: str | None) -> str:
    if not code:
        return ""
    text = REASONS.get(code)
    return str(text) if text is not None else str(REASONS["malformed"])


PASSWORD_ISSUES = {
    "wrong_current": _l("The current password is incorrect."),
    "mismatch": _l("The two new passwords do not match."),
    "too_short": _l("The password is too short (at least %(n)s characters)."),
    "too_long": _l("The password is too long (at most %(n)s characters)."),
    "letters_digits": _l("Use both letters and digits."),
    "common": _l("This password is too common and easy to guess."),
    "contains_login": _l("The password must not contain your login ID."),
    "reused": _l("You used this password recently. Please choose a new one."),
}


def password_issue(code: str, policy: object = None) -> str:
    text = PASSWORD_ISSUES.get(code)
    if text is None:
        return code
    n = getattr(policy, "max_length" if code == "too_long" else "min_length", 8)
    return str(text) % {"n": n} if "%(n)s" in str(text) else str(text)
