"""Authentication: password hashing, TOTP, the logged-in principal."""
