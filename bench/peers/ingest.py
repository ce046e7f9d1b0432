"""The Python peer of leadpipe-ingest, for bench/side-by-side.sh only.

Our own version of the typical Python ingest: for each SQS record, one Graph GET for the
lead (with appsecret_proof), then one conditional put_item so a lead is stored once; a
record that fails is reported in batchItemFailures. boto3 client and HTTP session at import.
"""

import hashlib
import hmac
import json
import os
import urllib.parse
import urllib.request

import boto3

DYNAMODB = boto3.client("dynamodb")
TABLE = os.environ["LEADS_TABLE"]
GRAPH = os.environ.get("GRAPH_API_BASE", "https://graph.facebook.com").rstrip("/")
TOKEN = os.environ["ACCESS_TOKEN"]
PROOF = hmac.new(os.environ["APP_SECRET"].encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
FIELDS = (
    "id,created_time,ad_id,ad_name,adset_id,adset_name,campaign_id,campaign_name,form_id,"
    "field_data,custom_disclaimer_responses,is_organic,platform,partner_name,retailer_item_id,"
    "home_listing,vehicle,post"
)


def _lead(leadgen_id):
    query = urllib.parse.urlencode(
        {"access_token": TOKEN, "appsecret_proof": PROOF, "fields": FIELDS}
    )
    with urllib.request.urlopen(f"{GRAPH}/v23.0/{leadgen_id}?{query}", timeout=10) as response:
        return json.loads(response.read())


def handler(event, context):
    failures = []
    for record in event.get("Records", []):
        try:
            message = json.loads(record["body"])
            lead = _lead(message["leadgen_id"])
            item = {
                "lead_id": {"S": str(lead["id"])},
                "page_id": {"S": message["page_id"]},
                "form_id": {"S": str(lead.get("form_id", message.get("form_id", "")))},
                "created_time": {"S": lead["created_time"]},
                "source": {"S": "webhook"},
                "raw": {"S": json.dumps(lead)},
            }
            try:
                DYNAMODB.put_item(
                    TableName=TABLE,
                    Item=item,
                    ConditionExpression="attribute_not_exists(lead_id)",
                )
            except DYNAMODB.exceptions.ConditionalCheckFailedException:
                pass
            print(json.dumps({"level": "INFO", "message": "stored", "leadgen_id": lead["id"]}))
        except Exception:  # noqa: BLE001 - the record goes back to the queue
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
