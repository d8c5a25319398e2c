"""What SendGrid's v3 Mail Send rejects with 400, as one linear, regex-free validation pass.

Kept apart from the server (``tests/emulators/sendgrid.py``) so the rules read as a list.
"""

from __future__ import annotations

import json
import time
from typing import Any

MAX_PERSONALIZATIONS = MAX_RECIPIENTS = 1000
MAX_MAP_BYTES = 10_000
MAX_SEND_AT_AHEAD = 72 * 3600
MAX_CATEGORIES, MAX_CATEGORY_LEN = 10, 255
HELP_BASE = "https://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."

ApiError = dict[str, str | None]

_TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least one email object "
    "with a valid email address."
)
_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires the email "
    'parameter, but may also contain a name parameter.  e.g. {"email" : "example@example.com"}'
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template with a subject "
    "defined or if every personalization has a subject defined."
)
_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must be at least "
    "one defined content block."
)
_CONTENT_ORDER = "If present, text/plain must be first, followed by text/html, followed by any other content."
_SEND_AT = "The send_at parameter must be a unix timestamp (integer) no more than 72 hours in the future."
_NON_EMPTY = "must be a string at least one character in length."

# Characters never valid (unquoted) in a local part / a domain; checked with C-level set operations.
_LOCAL_FORBIDDEN = frozenset(' <>()[]\\,;:"@')
_DOMAIN_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_DOMAIN_FORBIDDEN = frozenset(" <>()[]\\,;:\"@!#$%&'*+/=?^_`{|}~")
_RECIPIENT_TOPICS = {kind: f"personalizations.{kind}" for kind in ("to", "cc", "bcc")}
_CONTENT_RANK = {"text/plain": 0, "text/html": 1}
_TRACKING_SWITCHES = {
    "click_tracking": {"enable", "enable_text"},
    "open_tracking": {"enable"},
    "subscription_tracking": {"enable"},
    "ganalytics": {"enable"},
}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def is_valid_email(value: object) -> bool:
    """Regex-free syntax check close to SendGrid's: one @, dot-atom local part, dotted domain."""
    if not isinstance(value, str) or len(value) > 320 or not value.isprintable():
        return False
    local, at, domain = value.rpartition("@")
    if not at or not local or len(local) > 64 or not domain or len(domain) > 255:
        return False
    if not _LOCAL_FORBIDDEN.isdisjoint(local) or local[0] == "." or local[-1] == "." or ".." in local:
        return False
    if not (_DOMAIN_ASCII.issuperset(domain) if domain.isascii() else _DOMAIN_FORBIDDEN.isdisjoint(domain)):
        return False
    labels = domain.split(".")
    if len(labels) < 2 or "" in labels or labels[-1].isdigit() or max(map(len, labels)) > 63:
        return False
    return domain[0] != "-" and domain[-1] != "-" and ".-" not in domain and "-." not in domain


def _string_sizes(mapping: dict[str, Any]) -> dict[str, int]:
    """UTF-8 size (key + value) of every string-valued entry; SendGrid's byte limits count these."""
    return {k: len(k.encode()) + len(v.encode()) for k, v in mapping.items() if isinstance(v, str)}


def _type_message(expected: str, value: object) -> str:
    """SendGrid's JSON-schema style type error."""
    return f"Invalid type. Expected: {expected}, given: {_JSON_TYPES.get(type(value), 'null')}."


def api_error(field_path: str | None, message: str, topic: str | None = None) -> ApiError:
    """One entry of SendGrid's ``{"errors": [...]}`` list."""
    return {"message": message, "field": field_path, "help": HELP_BASE + topic if topic else None}


def errors_body(*errors: ApiError) -> bytes:
    return json.dumps({"errors": list(errors)}).encode()


class _MailValidator:
    """Collects every problem of one request (SendGrid reports them all at once) in one linear pass."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.errors: list[ApiError] = []

    def add(self, field_path: str | None, message: str, topic: str | None) -> None:
        self.errors.append(api_error(field_path, message, topic))

    def run(self, body: dict[str, Any]) -> list[ApiError]:
        self._personalizations(body)
        sender = body.get("from")
        if isinstance(sender, dict) and sender.get("email") is not None:
            self._address(sender, "from", "from")
        else:
            self.add("from.email", _FROM_REQUIRED, "from")
        self._content(body)
        self._categories(body.get("categories"))
        self._reply_to(body.get("reply_to"), body.get("reply_to_list"))
        self._string_map(body.get("headers"), "", "headers")
        self._send_at(body.get("send_at"), "")
        self._tracking_settings(body.get("tracking_settings"))
        template_id = body.get("template_id")
        if template_id is not None and not isinstance(template_id, str):
            self.add("template_id", _type_message("string", template_id), "template_id")
        return self.errors

    def _tracking_settings(self, settings: object) -> None:
        """``tracking_settings``: an object of known settings, each an object whose switches are booleans."""
        if settings is None:
            return
        if not isinstance(settings, dict):
            self.add("tracking_settings", _type_message("object", settings), "tracking_settings")
            return
        for name, setting in settings.items():
            where = f"tracking_settings.{name}"
            if name not in _TRACKING_SWITCHES:
                self.add(where, "Additional property is not allowed.", "tracking_settings")
            elif not isinstance(setting, dict):
                self.add(where, _type_message("object", setting), "tracking_settings")
            else:
                for switch in _TRACKING_SWITCHES[name] & setting.keys():
                    if not isinstance(setting[switch], bool):
                        message = _type_message("boolean", setting[switch])
                        self.add(f"{where}.{switch}", message, "tracking_settings")

    def _personalizations(self, body: dict[str, Any]) -> None:
        items = body.get("personalizations")
        if not isinstance(items, list) or not items:
            message = "The personalizations field is required and must have at least one personalization."
            self.add("personalizations", message, "personalizations")
            return
        if len(items) > MAX_PERSONALIZATIONS:
            message = (
                f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per API "
                f"request. You have provided {len(items)} personalizations."
            )
            self.add("personalizations", message, "personalizations")
        top_args = body.get("custom_args")
        top_sizes = _string_sizes(top_args) if isinstance(top_args, dict) else {}
        if self._string_map(top_args, "", "custom_args") > MAX_MAP_BYTES:
            self.add("custom_args", "Custom arguments must total no more than 10,000 bytes.", "custom_args")
            top_sizes = {}
        subject = body.get("subject")
        self._optional_text(subject, "", "subject")
        subject_needed, subject_missing, recipients = not subject and "template_id" not in body, False, 0
        for i, personalization in enumerate(items):
            if not isinstance(personalization, dict):
                self.add(
                    f"personalizations.{i}", _type_message("object", personalization), "personalizations"
                )
                continue
            recipients += self._personalization(personalization, f"personalizations.{i}", top_sizes)
            subject_missing = subject_missing or (subject_needed and not personalization.get("subject"))
        if recipients > MAX_RECIPIENTS:
            message = f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per request."
            self.add("personalizations", f"{message} You have provided {recipients}.", "recipient.limits")
        if subject_missing:
            self.add("subject", _SUBJECT_REQUIRED, "subject")

    def _personalization(self, p: dict[str, Any], path: str, top_sizes: dict[str, int]) -> int:
        """Validate one personalization; return how many recipients (to + cc + bcc) it carries.

        Hot path (1,000 times a request): addresses' field paths are formatted only for errors.
        """
        seen: set[str] = set()
        duplicate: str | None = None
        count = 0
        for kind in ("to", "cc", "bcc"):
            addresses = p.get(kind)
            if addresses is None and kind != "to":
                continue
            where, topic = f"{path}.{kind}", _RECIPIENT_TOPICS[kind]
            if not isinstance(addresses, list) or (kind == "to" and not addresses):
                self.add(where, _TO_REQUIRED if kind == "to" else _type_message("array", addresses), topic)
                continue
            count += len(addresses)
            for j, address in enumerate(addresses):
                email = self._address(address, where, topic, j)
                if email is None:
                    continue
                key = email.lower()
                if key in seen and duplicate is None:
                    duplicate = f"We found the first duplicate instance of [{email}] in the {where} field."
                seen.add(key)
        if duplicate is not None:
            message = (
                "Each email address in the personalization block should be unique between to, cc, and bcc."
            )
            self.add(path, f"{message} {duplicate}", "recipient.duplicates")
        if "subject" in p:
            self._optional_text(p["subject"], path, "subject")
        if self._string_map(p.get("substitutions"), path, "substitutions") > MAX_MAP_BYTES:
            message = "Substitutions must total no more than 10,000 bytes per personalization."
            self.add(f"{path}.substitutions", message, "substitutions")
        args = p.get("custom_args")
        size = self._string_map(args, path, "custom_args")
        if top_sizes:  # SendGrid merges the top-level custom_args into every personalization
            size += sum(n for key, n in top_sizes.items() if not isinstance(args, dict) or key not in args)
        if size > MAX_MAP_BYTES:
            message = (
                "Custom arguments (merged with the top-level ones) must total no more than 10,000 bytes."
            )
            self.add(f"{path}.custom_args", message, "custom_args")
        if "headers" in p:
            self._string_map(p["headers"], path, "headers")
        if "send_at" in p:
            self._send_at(p["send_at"], path)
        return count

    def _address(self, value: object, where: str, topic: str, index: int | None = None) -> str | None:
        """Check an email object ``{"email": ..., "name": ...}``; return the address when valid."""
        if isinstance(value, dict):
            email, name = value.get("email"), value.get("name")
            name_ok = name is None or (isinstance(name, str) and ";" not in name and "," not in name)
            if name_ok and isinstance(email, str) and is_valid_email(email):
                return email
        path = where if index is None else f"{where}.{index}"
        if not isinstance(value, dict):
            self.add(path, _type_message("object", value), topic)
            return None
        if not name_ok:
            self.add(f"{path}.name", "The name must be a string without ';' or ',' characters.", topic)
        if isinstance(email, str) and is_valid_email(email):
            return email
        self.add(f"{path}.email", "Does not contain a valid address.", topic)
        return None

    def _string_map(self, value: object, prefix: str, name: str) -> int:
        """Check that ``prefix.name`` is an object of string values; return its UTF-8 size in bytes."""
        if value is None:
            return 0
        if isinstance(value, dict):
            try:  # fast path: str.join does the type check and the counting in C
                return len("".join(value).encode()) + len("".join(value.values()).encode())
            except TypeError:
                pass
        path = f"{prefix}.{name}" if prefix else name
        if not isinstance(value, dict):
            self.add(path, _type_message("object", value), name)
            return 0
        for key, item in value.items():
            if not isinstance(item, str):
                self.add(f"{path}.{key}", _type_message("string", item), name)
        return sum(_string_sizes(value).values())

    def _optional_text(self, value: object, prefix: str, name: str) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            self.add(f"{prefix}.{name}" if prefix else name, f"The {name} {_NON_EMPTY}", name)

    def _send_at(self, value: object, prefix: str) -> None:
        limit = self.now + MAX_SEND_AT_AHEAD
        if value is not None and (type(value) is not int or not 0 <= value <= limit):
            self.add(f"{prefix}.send_at" if prefix else "send_at", _SEND_AT, "send_at")

    def _content(self, body: dict[str, Any]) -> None:
        content = body.get("content")
        if content is None and isinstance(body.get("template_id"), str):
            return
        if not isinstance(content, list) or not content:
            self.add("content", _CONTENT_REQUIRED, "content")
            return
        highest, seen = -1, set()
        for i, item in enumerate(content):
            if not isinstance(item, dict):
                self.add(f"content.{i}", _type_message("object", item), "content")
                continue
            ctype, value = item.get("type"), item.get("value")
            if not isinstance(ctype, str) or not ctype:
                self.add(f"content.{i}.type", f"The content type {_NON_EMPTY}", "content.type")
            elif ";" in ctype or "\r" in ctype or "\n" in ctype:
                message = "The content type cannot contain ';', or CRLF characters."
                self.add(f"content.{i}.type", message, "content.type")
            else:
                rank = _CONTENT_RANK.get(ctype.lower(), 2)
                if rank < 2 and rank in seen:
                    message = "If present, text/plain and text/html may only be provided once."
                    self.add(f"content.{i}.type", message, "content.type")
                elif rank < highest:
                    self.add(f"content.{i}.type", _CONTENT_ORDER, "content.type")
                seen.add(rank)
                highest = max(highest, rank)
            if not isinstance(value, str) or not value:
                self.add(f"content.{i}.value", f"The content value {_NON_EMPTY}", "content.value")

    def _categories(self, categories: object) -> None:
        if categories is None:
            return
        if not isinstance(categories, list):
            self.add("categories", _type_message("array", categories), "categories")
            return
        if len(categories) > MAX_CATEGORIES:
            message = f"You may not have more than {MAX_CATEGORIES} categories per request."
            self.add("categories", message, "categories")
        seen: set[str] = set()
        for i, category in enumerate(categories):
            if not isinstance(category, str) or not 0 < len(category) <= MAX_CATEGORY_LEN:
                message = f"Category {i} must be a non-empty string of at most {MAX_CATEGORY_LEN} characters."
                self.add("categories", message, "categories")
            elif not category.isascii():
                self.add("categories", f"Category {i} must contain only ASCII characters.", "categories")
            elif category in seen:
                self.add("categories", f"The category {category!r} appears more than once.", "categories")
            seen.add(str(category))

    def _reply_to(self, reply_to: object, reply_to_list: object) -> None:
        if reply_to is not None:
            self._address(reply_to, "reply_to", "reply_to")
        if reply_to_list is None:
            return
        if reply_to is not None:
            message = "The reply_to and reply_to_list fields cannot be used together; use only one."
            self.add("reply_to_list", message, "reply_to_list")
        if not isinstance(reply_to_list, list) or not reply_to_list:
            message = "The reply_to_list must be a non-empty array of email objects."
            self.add("reply_to_list", message, "reply_to_list")
            return
        for j, address in enumerate(reply_to_list):
            self._address(address, f"reply_to_list.{j}", "reply_to_list")


def validate_mail(body: object, now: float | None = None) -> list[ApiError]:
    """Every SendGrid 400 error for a parsed /v3/mail/send body (empty list when it is valid)."""
    if not isinstance(body, dict):
        return [api_error(None, _type_message("object", body))]
    return _MailValidator(time.time() if now is None else now).run(body)


CONTENT_TYPE_MESSAGE = "Content-Type should be application/json."
"""SendGrid's 415 message for a body that is not JSON."""


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json``, optionally with ``charset=utf-8`` (which Mail Send has always taken: the C#
    SDK sent it for years). A media type is case-insensitive; any other type or charset gets a 415."""
    if not content_type:
        return False
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    return media_type == "application/json" and all(
        parameter.replace(" ", "") in ("charset=utf-8", 'charset="utf-8"') for parameter in parameters
    )


def is_sandbox(body: dict[str, Any]) -> bool:
    """``mail_settings.sandbox_mode.enable == true``: validate, answer 200, deliver nothing."""
    settings = body.get("mail_settings")
    sandbox = settings.get("sandbox_mode") if isinstance(settings, dict) else None
    return isinstance(sandbox, dict) and sandbox.get("enable") is True
