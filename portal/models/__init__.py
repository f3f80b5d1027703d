"""SQLAlchemy models, one module per domain."""

from .accounts import ApiToken, ClientUser, Company, Staff, staff_companies
from .audit import AuditEvent
from .base import Base, utcnow
from .system import SystemStatus
from .uploads import PENDING_SCAN, Purpose, Status, Upload, UploadEvent

__all__ = [
    "PENDING_SCAN",
    "ApiToken",
    "AuditEvent",
    "Base",
    "ClientUser",
    "Company",
    "Purpose",
    "Staff",
    "Status",
    "SystemStatus",
    "Upload",
    "UploadEvent",
    "staff_companies",
    "utcnow",
]
