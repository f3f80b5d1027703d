"""SQLAlchemy models, one module per domain."""

from .accounts import ApiToken, ClientUser, Company, Staff, staff_companies
from .audit import AuditEvent
from .base import Base, utcnow
from .office import DeletionRequest, DisposalRecord, NoticeState
from .reports import MonthlyReport
from .security import AddressFailure, PasswordHistory, Policy, RecoveryCode, WebSession
from .system import SystemStatus
from .uploads import PENDING_SCAN, Purpose, Status, TusPart, TusUpload, Upload, UploadEvent

__all__ = [
    "PENDING_SCAN",
    "AddressFailure",
    "ApiToken",
    "AuditEvent",
    "Base",
    "ClientUser",
    "DeletionRequest",
    "DisposalRecord",
    "Company",
    "MonthlyReport",
    "NoticeState",
    "PasswordHistory",
    "Policy",
    "Purpose",
    "RecoveryCode",
    "Staff",
    "Status",
    "SystemStatus",
    "TusPart",
    "TusUpload",
    "Upload",
    "UploadEvent",
    "WebSession",
    "staff_companies",
    "utcnow",
]
