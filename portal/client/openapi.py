"""The client API described as OpenAPI 3.1, served at /api/v1/openapi.json.

Public on purpose: it is documentation of ../shared/contract.md, and holds
nothing about any company.  Kept beside the views it describes; a test
checks that every /api/v1 route of the app is in it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

ERROR = {"$ref": "#/components/schemas/Error"}
UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
TUS_ID = {"name": "tus_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}


def _h(name: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": {"type": "string"},
            "description": description}


TUS_RESUMABLE = _h("Tus-Resumable", "always 1.0.0 (else 412)")
_STATE = {"Upload-Offset": {"schema": {"type": "integer"}},
          "Upload-Expires": {"schema": {"type": "string"}, "description": "RFC 7231 date"},
          "Kinko-Upload-Id": {"schema": {"type": "string"}, "description":
                              "once complete: the upload at /api/v1/uploads/{upload_id}"}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}}
            for c in codes}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "kinko client API",
        "version": "1",
        "description": (
            "Upload files holding My Numbers to your company's room and follow each one "
            "through scanning into the office vault. Authenticate with a bearer token "
            "(issued by the office or under アカウント設定). Errors are JSON "
            "{\"error\": code, \"message\": text} with a 4xx status; messages are Japanese "
            "by default."),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/purposes": {"get": {
            "summary": "Purposes of use (利用目的) to choose from",
            "responses": {"200": {"description": "the list", "content": {"application/json": {
                "schema": {"type": "object", "required": ["purposes"], "properties": {
                    "purposes": {"type": "array", "items": {
                        "type": "object", "required": ["code", "label"],
                        "properties": {"code": {"type": "string"},
                                       "label": {"type": "string"}}}}}}}}},
                **_errors(401)}}},
        "/api/v1/uploads": {
            "get": {"summary": "Your company's uploads, newest first",
                    "responses": {"200": {"description": "the list", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "uploads": {"type": "array", "items": {
                                "$ref": "#/components/schemas/Upload"}}}}}}},
                        **_errors(401)}},
            "post": {
                "summary": "Upload one file (the raw bytes as the body)",
                "parameters": [
                    {"name": "Content-Disposition", "in": "header", "required": True,
                     "schema": {"type": "string"},
                     "example": "attachment; filename*=UTF-8''%E7%A4%BE%E5%93%A1.csv"},
                    {"name": "X-Purpose", "in": "header", "required": True,
                     "schema": {"type": "string"}, "description": "a purpose code"}],
                "requestBody": {"required": True, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": {"description": "stored, encrypted; scanning follows",
                                      "content": {"application/json": {"schema": {
                                          "$ref": "#/components/schemas/Upload"}}}},
                              **_errors(400, 401, 403, 413, 415)}}},
        "/api/v1/uploads/{upload_id}": {"get": {
            "summary": "One upload with its history",
            "parameters": [UPLOAD_ID],
            "responses": {"200": {"description": "the upload", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Upload"}}}},
                **_errors(401, 404)}}},
        "/api/v1/uploads/{upload_id}/receipt": {"get": {
            "summary": "The receipt (受領書) as PDF",
            "parameters": [UPLOAD_ID],
            "responses": {"200": {"description": "PDF", "content": {
                "application/pdf": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(401, 404)}}},
        "/api/v1/tus/": {
            "options": {"summary": "tus 1.0.0: what the server supports",
                        "responses": {"204": {"description": "capabilities", "headers": {
                            "Tus-Version": {"schema": {"type": "string"}},
                            "Tus-Extension": {"schema": {"type": "string"}, "description":
                                              "creation,termination,expiration"},
                            "Tus-Max-Size": {"schema": {"type": "integer"}}}},
                            **_errors(401)}},
            "post": {
                "summary": "tus creation: start a resumable upload",
                "description": "Resumable uploads (https://tus.io, 1.0.0). Send the file with "
                               "PATCH in pieces (8 MiB or more each but the last); after a "
                               "broken connection ask HEAD for the offset and go on. Each "
                               "piece is encrypted as it arrives; a body cut short keeps what "
                               "arrived. Expires 24 hours after the last piece.",
                "parameters": [TUS_RESUMABLE, _h("Upload-Length", "the file's size in bytes"),
                               _h("Upload-Metadata", "filename <base64 UTF-8>,purpose "
                                  "<base64 purpose code>")],
                "responses": {"201": {"description": "created", "headers": {
                    "Location": {"schema": {"type": "string"}},
                    "Upload-Expires": _STATE["Upload-Expires"]}},
                    **_errors(400, 401, 403, 412, 413)}}},
        "/api/v1/tus/{tus_id}": {
            "head": {"summary": "tus: how much the server has",
                     "parameters": [TUS_ID, TUS_RESUMABLE],
                     "responses": {"200": {"description": "state", "headers": {
                         **_STATE, "Upload-Length": {"schema": {"type": "integer"}}}},
                         "404": {"description": "unknown, or another company's"},
                         "410": {"description": "expired"}}},
            "patch": {"summary": "tus: append bytes at Upload-Offset",
                      "parameters": [TUS_ID, TUS_RESUMABLE,
                                     _h("Upload-Offset", "must equal the server's offset")],
                      "requestBody": {"required": True, "content": {
                          "application/offset+octet-stream": {
                              "schema": {"type": "string", "format": "binary"}}}},
                      "responses": {"204": {"description": "stored; the last piece makes "
                                            "it an upload (Kinko-Upload-Id)",
                                            "headers": _STATE},
                                    **_errors(400, 401, 404, 409, 410, 412, 413, 415, 422)}},
            "delete": {"summary": "tus termination: discard what was received",
                       "parameters": [TUS_ID, TUS_RESUMABLE],
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(401, 404, 410, 412)}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"},
                                     "message": {"type": "string"}}},
            "Upload": {"type": "object", "required": ["id", "status", "filename", "size",
                                                      "sha256"],
                       "properties": {
                           "id": {"type": "string"},
                           "filename": {"type": "string"},
                           "status": {"enum": ["received", "scanning", "clean", "infected",
                                               "refused", "vaulted", "disposed"]},
                           "size": {"type": "integer"},
                           "sha256": {"type": "string"},
                           "purpose": {"type": "string"},
                           "kind": {"type": ["string", "null"]},
                           "reason_code": {"type": ["string", "null"]},
                           "reason": {"type": ["string", "null"],
                                      "description": "why infected or refused, in words"},
                           "created_at": {"type": "string", "format": "date-time"},
                           "events": {"type": "array", "items": {
                               "type": "object", "properties": {
                                   "status": {"type": "string"},
                                   "at": {"type": "string", "format": "date-time"}}}},
                           "mynumber": {
                               "type": "object",
                               "description": "csv/xlsx/ods: cell positions only, never digits",
                               "properties": {"found": {"type": "integer"}, "invalid": {
                                   "type": "array", "items": {"type": "object", "properties": {
                                       "sheet": {"type": "string"},
                                       "row": {"type": "integer"},
                                       "column": {"type": "string"}}}}}}}},
        },
    },
}


def init(app: Flask) -> None:
    @app.route("/api/v1/openapi.json", endpoint="openapi")
    def openapi() -> Any:
        return jsonify(SPEC)
