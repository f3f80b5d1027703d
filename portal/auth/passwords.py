"""Password hashing (argon2id) and initial passwords."""

from __future__ import annotations

import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults
# Verified against when the login is unknown, so that unknown logins and
# wrong passwords cost the same time (no account enumeration by timing).
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)


def initial_password(length: int = 14) -> str:
    """Letters and digits mixed, without look-alike characters."""
    alphabet = "".join(c for c in string.ascii_letters + string.digits if c not in "Il1O0o")
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(length))
        if any(c.isdigit() for c in pw) and any(c.isalpha() for c in pw):
            return pw


def policy_problems(password: str, *, min_length: int = 8, max_length: int = 128) -> list[str]:
    """The office's policy: at least 8 characters, letters and digits mixed."""
    problems = []
    if len(password) < min_length:
        problems.append(f"at least {min_length} characters")
    if len(password) > max_length:
        problems.append(f"at most {max_length} characters")
    if not (any(c.isdigit() for c in password) and any(c.isalpha() for c in password)):
        problems.append("letters and digits mixed")
    return problems
