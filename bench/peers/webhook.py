"""The Python peer of leadpipe-webhook, for bench/side-by-side.sh only.

Our own version of the webhook a team would typically write in Python: a boto3 client made
at import, the signature checked with hmac.compare_digest, every leadgen change turned into
a queue message, one send_message_batch per 10. It does the same checks as the Rust function
(GET verification, signature, JSON shape) so the two do the same work per request.
"""

import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timezone

import boto3

SQS = boto3.client("sqs")
QUEUE_URL = os.environ["QUEUE_URL"]
APP_SECRET = os.environ["APP_SECRET"].encode()
VERIFY_TOKEN = os.environ.get("VERIFY_TOKEN", "")


def _answer(status, body="", content_type="text/plain"):
    return {"statusCode": status, "headers": {"content-type": content_type}, "body": body}


def handler(event, context):
    method = event.get("requestContext", {}).get("http", {}).get("method", "POST")
    if method == "GET":
        query = event.get("queryStringParameters") or {}
        if query.get("hub.mode") == "subscribe" and hmac.compare_digest(
            query.get("hub.verify_token", ""), VERIFY_TOKEN
        ):
            return _answer(200, query.get("hub.challenge", ""))
        return _answer(403, "forbidden")
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    expected = "sha256=" + hmac.new(APP_SECRET, raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers.get("x-hub-signature-256", ""), expected):
        return _answer(401, "bad signature")
    try:
        payload = json.loads(raw)
    except ValueError:
        return _answer(400, "not JSON")
    received_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    messages = []
    for entry in payload.get("entry", []):
        for change in entry.get("changes", []):
            if change.get("field") != "leadgen":
                continue
            value = change.get("value", {})
            message = {
                "leadgen_id": str(value["leadgen_id"]),
                "page_id": str(value.get("page_id", entry.get("id"))),
                "received_at": received_at,
            }
            for key in ("form_id", "ad_id", "adgroup_id"):
                if key in value:
                    message[key] = str(value[key])
            if "created_time" in value:
                message["created_time"] = int(value["created_time"])
            messages.append(message)
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        result = SQS.send_message_batch(
            QueueUrl=QUEUE_URL,
            Entries=[{"Id": str(i), "MessageBody": json.dumps(m)} for i, m in enumerate(chunk)],
        )
        if result.get("Failed"):
            return _answer(500, "queue refused")
    print(json.dumps({"level": "INFO", "message": "accepted", "leads": len(messages)}))
    return _answer(200, "ok")
