"""Writes producer/src/openapi.json, the API description served at GET /openapi.json.

Run `python3 scripts/openapi.py` after changing an endpoint; the e2e suite checks every
documented operation against the running stack (schemathesis) and fails on drift."""

import json
from pathlib import Path

ERROR = {"$ref": "#/components/schemas/Error"}
NULLABLE_STR = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}


def err(description):
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def ok(description, schema, status="200"):
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


AUTH_ERRORS = {"401": err("missing or malformed Authorization header"), "403": err("token not allowed here")}
ADMIN_ERRORS = AUTH_ERRORS
READ_ERRORS = AUTH_ERRORS


def q(name, schema, description, required=False):
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def p(name, schema, description):
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
WEEK = {"type": "string", "pattern": r"^\d{4}-W\d{2}$"}
DB = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,62}$"}
UUID = {"type": "string", "format": "uuid"}
NULLABLE_UUID = {"type": ["string", "null"], "format": "uuid"}
# A backup key as /list shows it: daily/<date>/<db>.sql[.gz] or manual/<date>/<job>/<db>.sql[.gz].
KEY = {"type": "string", "pattern": r"^(daily/\d{4}-\d{2}-\d{2}|manual/\d{4}-\d{2}-\d{2}/[0-9a-f-]{36})/[a-z0-9][a-z0-9_-]{0,63}\.sql(\.gz)?$"}
# The latest verification of a backup's dump (null before the dump exists, for weekly
# archives, and for dumps older than verification).
VERIFY_STATE = {"enum": ["pending", "verifying", "verified", "verify_failed", "skipped", None]}

# A stored object streamed as it is: a dump (.sql, .sql.gz, encrypted .age) or a weekly archive.
DOWNLOAD = {"description": "the object's bytes, with Content-Disposition", "headers": {"X-Backup-SHA256": {"schema": {"type": "string"}}},
            "content": {"application/sql": {"schema": {"type": "string", "format": "binary"}},
                        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}

run = {
    "type": "object",
    "required": ["id", "database", "state", "attempts", "r2Key", "queuedAt", "step", "history"],
    "properties": {
        "id": UUID, "database": {"type": "string"},
        "state": {"enum": ["queued", "running", "retrying", "succeeded", "dead"]},
        "attempts": {"type": "integer", "minimum": 0}, "r2Key": {"type": "string"},
        "bytes": NULLABLE_INT, "rows": NULLABLE_INT, "tables": NULLABLE_INT,
        "sha256": NULLABLE_STR, "error": NULLABLE_STR, "queuedAt": {"type": "string"},
        "startedAt": NULLABLE_STR, "finishedAt": NULLABLE_STR, "step": {"type": "integer", "minimum": 0},
        "bookmark": NULLABLE_STR,
        "verifyState": VERIFY_STATE, "verifyOperation": NULLABLE_UUID, "verifyTable": NULLABLE_STR,
        "verifyDetail": NULLABLE_STR, "verifyMillis": NULLABLE_INT, "verifiedAt": NULLABLE_STR,
        # The dump's off-site copy (OFFSITE): its state and error, null without one.
        "offsiteState": {"enum": ["queued", "running", "retrying", "succeeded", "dead", None]}, "offsiteError": NULLABLE_STR,
        "history": {"type": "array", "items": {"type": "object", "properties": {
            "step": {"type": "integer"}, "attempt": {"type": "integer"}, "startedAt": {"type": "string"},
            "finishedAt": {"type": "string"},
            "outcome": {"enum": ["continued", "succeeded", "retrying", "dead", "leased_elsewhere"]},
            "error": NULLABLE_STR, "retryDelaySeconds": NULLABLE_INT}}},
    },
}
job = {
    "type": "object",
    "required": ["jobId", "kind", "trigger", "requestedAt", "createdAt", "status", "runs"],
    "properties": {
        "jobId": UUID, "kind": {"enum": ["daily", "manual"]}, "trigger": {"enum": ["cron", "http"]},
        "reason": NULLABLE_STR, "requestedAt": {"type": "string"}, "createdAt": {"type": "string"},
        "status": {"enum": ["queued", "running", "completed", "partial", "failed"]},
        "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
    },
}
archive_job = {
    "type": "object",
    "required": ["jobId", "kind", "week", "state", "status", "r2Key"],
    "properties": {
        "jobId": UUID, "id": UUID, "kind": {"const": "archive"}, "week": WEEK,
        "trigger": {"enum": ["cron", "http"]},
        "state": {"enum": ["queued", "running", "retrying", "succeeded", "dead"]},
        "status": {"enum": ["running", "completed", "failed"]},
        "outcome": {"enum": ["archived", "already_archived", "nothing_to_archive", None]},
        "attempts": {"type": "integer"}, "step": {"type": "integer"}, "r2Key": {"type": "string"},
        "bytes": NULLABLE_INT, "sha256": NULLABLE_STR, "members": NULLABLE_INT, "excluded": NULLABLE_INT,
        "cleanup": {"type": ["object", "null"]}, "error": NULLABLE_STR,
    },
}
item = {
    "type": "object",
    "required": ["key", "kind", "date", "bytes", "sha256", "rows", "createdAt"],
    "properties": {
        "key": {"type": "string"}, "kind": {"enum": ["daily", "manual", "weekly"]},
        "database": NULLABLE_STR, "date": DATE, "bytes": {"type": "integer"}, "sha256": {"type": "string"},
        # Set for an encrypted backup (.age) only: the SHA-256 of what `age -d` gives back.
        "plaintextSha256": NULLABLE_STR,
        "rows": {"type": "integer"}, "tables": NULLABLE_INT, "createdAt": {"type": "string"},
        "bookmark": NULLABLE_STR, "deletedAt": NULLABLE_STR, "deleteReason": NULLABLE_STR,
        "verifyState": VERIFY_STATE, "verifyTable": NULLABLE_STR, "verifyDetail": NULLABLE_STR, "verifiedAt": NULLABLE_STR,
    },
}
verification = {
    "type": "object",
    "required": ["database", "key", "runId", "verifyState", "verifyTable", "verifyDetail", "verifiedAt"],
    "properties": {
        "database": {"type": "string"}, "key": {"type": "string"}, "runId": UUID, "verifyState": VERIFY_STATE,
        "verifyTable": NULLABLE_STR, "verifyDetail": NULLABLE_STR, "verifiedAt": NULLABLE_STR,
    },
}
status = {
    "type": "object",
    "required": ["status", "lastJob", "nextRuns", "storage", "databases", "verification"],
    "properties": {
        "status": {"enum": ["no backups yet", "ok", "backing up", "last job had failures", "a backup failed verification"]},
        "lastJob": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Job"}]},
        "nextRuns": {"type": "array", "items": {"type": "object", "required": ["worker", "cron", "what", "next"], "properties": {
            "worker": {"type": "string"}, "cron": {"type": "string"}, "what": {"type": "string"}, "next": NULLABLE_STR}}},
        "storage": {"type": "array", "items": {"type": "object", "required": ["kind", "count", "bytes", "oldest", "newest"], "properties": {
            "kind": {"enum": ["daily", "manual", "weekly", "all"]}, "count": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0}, "oldest": NULLABLE_STR, "newest": NULLABLE_STR}}},
        "databases": {"type": "array", "items": {"type": "string"}},
        "verification": {"type": "array", "items": {"$ref": "#/components/schemas/DatabaseVerification"}},
        # Off-site copies (OFFSITE): {"configured": false} without it.
        "offsite": {"type": "object", "required": ["configured"], "properties": {
            "configured": {"type": "boolean"}, "endpoint": {"type": "string"}, "bucket": {"type": "string"},
            "prefix": {"type": "string"}, "retention": {"type": "string"},
            "lagSeconds": {"type": "integer", "minimum": 0}, "copied": {"type": "integer", "minimum": 0},
            "copiedBytes": {"type": "integer", "minimum": 0}, "pending": {"type": "integer", "minimum": 0},
            "dead": {"type": "integer", "minimum": 0}, "lastCopiedAt": NULLABLE_STR, "lastError": NULLABLE_STR,
            "lastErrorKey": NULLABLE_STR}},
        # Email alerts (ALERT_EMAIL): {"configured": false} without it.
        "email": {"type": "object", "required": ["configured"], "properties": {
            "configured": {"type": "boolean"}, "from": {"type": "string"},
            "to": {"type": "array", "items": {"type": "string"}},
            "digest": {"enum": ["daily", "weekly", None]}, "dashboard": NULLABLE_STR}},
    },
}
# How an operation ended (tagged by "outcome"), null until it has.
outcome = {"oneOf": [
    {"type": "null"},
    {"type": "object", "required": ["outcome", "statements", "sqlBytes", "sha256Matches"], "properties": {
        "outcome": {"const": "restored"}, "statements": {"type": "integer", "minimum": 0},
        "sqlBytes": {"type": "integer", "minimum": 0}, "sha256Matches": {"type": "boolean"}}},
    {"type": "object", "required": ["outcome", "passed", "failedTable", "problems", "tables", "rows"], "properties": {
        "outcome": {"const": "verified"}, "passed": {"type": "boolean"}, "failedTable": NULLABLE_STR,
        "problems": {"type": "array", "items": {"type": "string"}},
        "tables": {"type": "integer", "minimum": 0}, "rows": {"type": "integer", "minimum": 0}}},
    {"type": "object", "required": ["outcome", "table", "message"], "properties": {
        "outcome": {"const": "failed"}, "table": NULLABLE_STR, "message": {"type": "string"}}},
    # Nothing done, for a reason that is not the dump's (VERIFY_DB is not a scratch database).
    {"type": "object", "required": ["outcome", "message"], "properties": {
        "outcome": {"const": "refused"}, "message": {"type": "string"}}},
    # A restore that failed after changing its target, which was put back as it was.
    {"type": "object", "required": ["outcome", "error", "table", "restored"], "properties": {
        "outcome": {"const": "rolledBack"}, "error": {"type": "string"}, "table": NULLABLE_STR,
        "restored": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["statements", "sqlBytes", "sha256Matches"],
                                                  "properties": {"statements": {"type": "integer", "minimum": 0},
                                                                 "sqlBytes": {"type": "integer", "minimum": 0},
                                                                 "sha256Matches": {"type": "boolean"}}}]}}},
]}
operation = {
    "type": "object",
    "required": ["id", "kind", "state", "sourceKey", "database", "runId", "archiveKey", "target", "tableName",
                 "preBackupJobId", "step", "attempts", "outcome", "failedTable", "error", "requestedAt",
                 "startedAt", "finishedAt"],
    "properties": {
        "id": UUID, "kind": {"enum": ["verify", "restore"]},
        "state": {"enum": ["queued", "running", "retrying", "succeeded", "failed", "dead"]},
        "sourceKey": {"type": "string"}, "database": {"type": "string"}, "runId": NULLABLE_UUID,
        "archiveKey": NULLABLE_STR, "target": NULLABLE_STR, "tableName": NULLABLE_STR, "preBackupJobId": NULLABLE_UUID,
        "step": {"type": "integer", "minimum": 0}, "attempts": {"type": "integer", "minimum": 0}, "outcome": outcome,
        "failedTable": NULLABLE_STR, "error": NULLABLE_STR, "requestedAt": {"type": "string"},
        "startedAt": NULLABLE_STR, "finishedAt": NULLABLE_STR,
    },
}
# What a restore would do (a dry run) or is about to do (queued).
restore_report = {
    "backup": {"type": "object", "required": ["key", "database", "kind", "date", "bytes", "tables", "rows", "source", "verification"], "properties": {
        "key": {"type": "string"}, "database": {"type": "string"}, "kind": {"enum": ["daily", "manual"]}, "date": DATE,
        "bytes": {"type": "integer", "minimum": 0}, "tables": {"type": "integer", "minimum": 0},
        "rows": {"type": "integer", "minimum": 0},
        "verification": {"type": "object", "required": ["state", "detail"], "properties": {
            "state": {"enum": ["pending", "verifying", "verified", "verify_failed", "skipped", None]}, "detail": NULLABLE_STR}},
        "source": {"oneOf": [
            {"type": "object", "required": ["from", "key"], "properties": {"from": {"const": "object"}, "key": {"type": "string"}}},
            {"type": "object", "required": ["from", "archive"], "properties": {
                "from": {"const": "weekly_archive"}, "archive": {"type": "string"}}},
            {"type": "object", "required": ["from", "bucket", "key"], "properties": {
                "from": {"const": "offsite"}, "bucket": {"type": "string"}, "key": {"type": "string"}}}]}}},
    "target": {"type": "object", "required": ["database", "empty", "contents"], "properties": {
        "database": {"type": "string"}, "empty": {"type": "boolean"},
        "contents": {"type": "object", "required": ["tables", "otherObjects"], "properties": {
            "tables": {"type": "array", "items": {"type": "object", "required": ["name", "rows"], "properties": {
                "name": {"type": "string"}, "rows": {"type": "integer", "minimum": 0}}}},
            "otherObjects": {"type": "integer", "minimum": 0}}}}},
    "table": NULLABLE_STR,
    "actions": {"type": "array", "items": {"type": "string"}},
    "requiresConfirmation": {"type": "boolean"},
}
REPORT_FIELDS = ["backup", "target", "table", "actions", "requiresConfirmation", "dryRun"]
dry_run = {
    "type": "object", "required": REPORT_FIELDS + ["toProceed"],
    "properties": {**restore_report, "dryRun": {"const": True},
                   "toProceed": {"type": "object", "required": ["dryRun", "confirm", "allowUnverified"], "properties": {
                       "dryRun": {"const": False}, "confirm": NULLABLE_STR, "allowUnverified": {"type": "boolean"}}}},
}
queued_restore = {
    "type": "object", "required": REPORT_FIELDS + ["operationId", "status", "preBackupJobId"],
    "properties": {**restore_report, "dryRun": {"const": False}, "operationId": UUID, "status": {"const": "queued"},
                   "preBackupJobId": NULLABLE_UUID},
}
decision = {"type": "object", "required": ["key", "delete", "reason"],
            "properties": {"key": {"type": "string"}, "delete": {"type": "boolean"}, "reason": {"type": "string"}}}

paths = {
    "/": {"get": {"summary": "Worker info", "security": [], "responses": ok("name, version, schedules, retention, databases", {"type": "object"})}},
    "/health": {"get": {"summary": "Liveness", "security": [], "responses": ok("ok", {"type": "object", "properties": {"ok": {"const": True}}})}},
    "/status": {"get": {"summary": "Last job, next runs, storage totals, each database's newest verification",
                        "responses": {**ok("status", {"$ref": "#/components/schemas/Status"}), **READ_ERRORS}}},
    "/jobs": {"get": {"summary": "Newest backup jobs",
                      "parameters": [q("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "jobs to return (20)")],
                      "responses": {**ok("jobs", {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}}),
                                    "400": err("bad parameter"), **READ_ERRORS}}},
    "/jobs/{id}": {"get": {"summary": "A backup or archive job",
                           "parameters": [p("id", UUID, "job id")],
                           "responses": {**ok("the job", {"oneOf": [{"$ref": "#/components/schemas/Job"}, {"$ref": "#/components/schemas/ArchiveJob"}]}),
                                         "400": err("not a UUID"), "404": err("no such job"), **READ_ERRORS}}},
    "/list": {"get": {"summary": "The inventory, newest first (by creation time), by keyset pages",
                      "parameters": [q("database", DB, "only this database"), q("date", DATE, "only this date (weekly: its week)"),
                                     q("kind", {"enum": ["daily", "manual", "weekly"]}, "only this kind"),
                                     q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "items per page (100)"),
                                     q("cursor", {"type": "string"}, "nextCursor of the previous page"),
                                     q("deleted", {"enum": ["true", "false"]}, "include deleted objects")],
                      "responses": {**ok("a page", {"type": "object", "required": ["items", "nextCursor"], "properties": {
                          "items": {"type": "array", "items": {"$ref": "#/components/schemas/InventoryItem"}}, "nextCursor": NULLABLE_STR}}),
                          "400": err("bad parameter"), **READ_ERRORS}}},
    "/download/{date}/{database}": {"get": {"summary": "A nightly backup, streamed",
                                            "parameters": [p("date", DATE, "night (UTC)"), p("database", DB, "configured database")],
                                            "responses": {"200": {"description": "the dump", "headers": {"X-Backup-SHA256": {"schema": {"type": "string"}}},
                                                                  "content": {"application/sql": {"schema": {"type": "string", "format": "binary"}},
                                                                              "application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                                                          "400": err("bad date"), "404": err("unknown database or no backup"), **READ_ERRORS}}},
    "/download": {"get": {"summary": "Any backup (nightly or manual) or weekly archive, by its key from GET /list, streamed",
                          "parameters": [q("key", {"type": "string"}, "a key from GET /list: daily/..., manual/... or weekly/...", required=True)],
                          "responses": {"200": DOWNLOAD,
                                        "400": err("no key, another parameter, or not the shape of an inventory key"),
                                        "404": err("no such backup or archive, or it was deleted"), **READ_ERRORS}}},
    "/runs/{id}/download": {"get": {"summary": "The backup a run wrote (nightly or manual), streamed",
                                    "parameters": [p("id", UUID, "run id")],
                                    "responses": {"200": DOWNLOAD, "400": err("run id not a UUID"),
                                                  "404": err("no such run, or its backup was deleted"),
                                                  "409": err("the run has not succeeded: no backup"), **READ_ERRORS}}},
    "/download/weekly/{week}": {"get": {"summary": "A weekly archive, streamed",
                                        "parameters": [p("week", WEEK, "ISO week")],
                                        "responses": {"200": {"description": "tar.gz", "headers": {"X-Backup-SHA256": {"schema": {"type": "string"}}},
                                                              "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
                                                      "400": err("bad week"), "404": err("no archive"), **READ_ERRORS}}},
    "/restore-guide/{database}": {"get": {"summary": "Restore steps for a backup",
                                          "parameters": [p("database", DB, "database"), q("date", DATE, "that night's backup instead of the newest")],
                                          "responses": {**ok("the guide", {"type": "object", "required": ["database", "key", "sha256", "steps", "tables"]}),
                                                        "400": err("bad parameter"), "404": err("no backup"), **READ_ERRORS}}},
    "/dead-letters": {"get": {"summary": "Dead runs and unreadable messages",
                              "parameters": [q("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "entries of each (50)")],
                              "responses": {**ok("dead letters", {"type": "object", "required": ["deadRuns", "rejectedMessages"]}),
                                            "400": err("bad parameter"), **READ_ERRORS}}},
    "/metrics": {"get": {"summary": "Prometheus metrics",
                         "responses": {"200": {"description": "text exposition format 0.0.4",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}, **READ_ERRORS}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {**ok("OpenAPI 3.1", {"type": "object"}), **READ_ERRORS}}},
    "/trigger": {"post": {"summary": "Back up now",
                          "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                          "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"}}],
                          "requestBody": {"required": False, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False, "properties": {
                                  "databases": {"type": "array", "minItems": 1, "items": DB},
                                  "reason": {"type": "string", "maxLength": 500}}}}}},
                          "responses": {**ok("queued", {"type": "object", "required": ["jobId", "databases", "status"]}, "202"),
                                        **ok("replayed (same Idempotency-Key)", {"type": "object"}),
                                        "400": err("bad body"), "409": err("idempotency race"), "413": err("body too large"),
                                        "422": err("Idempotency-Key reused with another body"), **ADMIN_ERRORS}}},
    "/runs/{id}/retry": {"post": {"summary": "Export a dead run again",
                                  "parameters": [p("id", UUID, "run id")],
                                  "responses": {**ok("queued", {"type": "object"}, "202"), "400": err("not a UUID"),
                                                "404": err("no such run"), "409": err("run not dead"), **ADMIN_ERRORS}}},
    "/runs/{id}/verify": {"post": {"summary": "Verify a stored backup again (restore it into the scratch database and compare)",
                                   "parameters": [p("id", UUID, "run id")],
                                   "responses": {**ok("queued", {"type": "object", "required": ["operationId", "kind", "runId", "backup", "status"],
                                                                 "properties": {"operationId": UUID, "kind": {"const": "verify"},
                                                                                "runId": {"type": "string"}, "backup": {"type": "string"},
                                                                                "status": {"const": "queued"}}}, "202"),
                                                 "400": err("run id not a UUID"), "404": err("no such run"), "409": err("run not succeeded, or its dump unavailable"),
                                                 **ADMIN_ERRORS}}},
    "/restore": {"post": {"summary": "Restore a backup into a configured database (a dry run unless dryRun is false)",
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "required": ["backup", "target"], "additionalProperties": False,
                              "properties": {
                                  "backup": {**KEY, "description": "a key from GET /list"},
                                  "target": {**DB, "description": "the configured database restored into"},
                                  "week": {**WEEK, "description": "read the backup out of this week's archive"},
                                  "table": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "restore this table alone"},
                                  "dryRun": {"type": "boolean", "default": True, "description": "report what would happen, change nothing"},
                                  "confirm": {"type": "string", "description": "the target's name again: required over a database that holds anything"},
                                  "allowUnverified": {"type": "boolean", "default": False, "description": "restore a backup whose verification failed"},
                                  "from": {"enum": ["r2", "offsite"], "default": "r2", "description": "read the backup from R2 or from its off-site copy (OFFSITE)"}}}}}},
                          "responses": {**ok("the dry run's report", {"$ref": "#/components/schemas/RestoreDryRun"}),
                                        **ok("queued (after a backup of the target when it holds anything)",
                                             {"$ref": "#/components/schemas/RestoreQueued"}, "202"),
                                        "400": err("bad body"), "404": err("no such backup, or no readable copy of it"),
                                        "409": err("the target holds data and confirm does not name it, the backup failed its verification and allowUnverified is not set, or from is offsite without OFFSITE"),
                                        "413": err("body too large"), "422": err("unknown target database or table"),
                                        **ADMIN_ERRORS}}},
    "/operations": {"get": {"summary": "Newest verifications and restores",
                            "parameters": [q("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "operations to return (20)")],
                            "responses": {**ok("operations", {"type": "object", "required": ["operations"], "properties": {
                                "operations": {"type": "array", "items": {"$ref": "#/components/schemas/Operation"}}}}),
                                "400": err("bad parameter"), **READ_ERRORS}}},
    "/operations/{id}": {"get": {"summary": "A verification or a restore",
                                 "parameters": [p("id", UUID, "operation id")],
                                 "responses": {**ok("the operation", {"$ref": "#/components/schemas/Operation"}),
                                               "400": err("operation id not a UUID"), "404": err("no such operation"), **READ_ERRORS}}},
    "/archive": {"post": {"summary": "Archive a finished ISO week",
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "required": ["week"], "additionalProperties": False,
                              "properties": {"week": WEEK}}}}},
                          "responses": {**ok("queued (or joined)", {"type": "object", "required": ["jobId", "week", "key"]}, "202"),
                                        "400": err("bad body or week"), "413": err("body too large"), **ADMIN_ERRORS}}},
    "/cleanup": {"post": {"summary": "Apply retention now",
                          "responses": {**ok("every decision", {"type": "object", "required": ["deleted", "kept", "errors"], "properties": {
                              "deleted": {"type": "array", "items": decision}, "kept": {"type": "array", "items": decision},
                              "errors": {"type": "array", "items": {"type": "string"}}}}), **ADMIN_ERRORS}}},
    "/dashboard": {"get": {"summary": "The dashboard page (a static shell; data needs a token)", "security": [],
                           "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
}

document = {
    "openapi": "3.1.0",
    "info": {"title": "d1-backup", "version": "0.1.0",
             "description": "Backups of Cloudflare D1 databases: trigger, follow, list, download, verify, restore."},
    "security": [{"bearer": []}],
    "paths": paths,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "ADMIN_TOKEN for everything; READ_TOKEN for reads of status and metadata (not downloads)"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "Run": run, "Job": job, "ArchiveJob": archive_job, "InventoryItem": item,
            "Status": status, "DatabaseVerification": verification, "Operation": operation,
            "RestoreDryRun": dry_run, "RestoreQueued": queued_restore,
        },
    },
}

out = Path(__file__).resolve().parents[1] / "producer" / "src" / "openapi.json"
out.write_text(json.dumps(document, indent=1) + "\n")
print(f"wrote {out}")
