#!/usr/bin/env python3
"""Cost of a million leads on the AWS stack, from the figures BENCHMARKS.md measured, beside
Zapier and Make at their published per-task prices. Prints the Markdown table BENCHMARKS.md
quotes. Every input is a named constant below: change one and re-run.

    python3 bench/cost-per-million.py [LEADS_PER_INGEST_BATCH] [MEMORY_MB]

The measured inputs come from bench/side-by-side.sh (CPU per invocation, log and metric bytes)
and the demo database (item size); the latencies of AWS's own services are assumptions, said
as such. Prices: us-east-1, on-demand, arm64, without free tiers, as published by AWS, Zapier
and Make and known to us on 2026-11-30 (no network here to re-check them: re-check before
quoting a figure to anyone).
"""

import math
import sys

# --- prices (USD) ---------------------------------------------------------------------------
LAMBDA_GB_SECOND = 0.0000133334  # arm64 duration, first 7.5 billion GB-s a month
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6  # standard queue, per 64 KB chunk
DYNAMODB_WRU = 0.625 / 1e6  # on-demand write request unit (since November 2024)
EVENTBRIDGE_EVENT = 1.00 / 1e6  # custom events put on a bus, per 64 KB chunk
API_DESTINATION_CALL = 0.20 / 1e6
LOGS_GB = 0.50  # CloudWatch Logs ingestion, standard class
ZAPIER_TASK = 89 / 5_000  # Professional, 5,000 tasks a month for $89 (overage is 1.25x this)
MAKE_CREDIT = 10.59 / 10_000  # Core, 10,000 credits a month for $10.59 (monthly billing)

# --- measured (BENCHMARKS.md, "Side by side with Python peers") -----------------------------
WEBHOOK_CPU_MS = 0.74  # process CPU per one-change invocation
INGEST_CPU_MS_PER_LEAD = 0.37  # with SQS batches of 10 (the bench's batch)
WEBHOOK_LOG_BYTES = 240 + 310  # log line + EMF line per one-change post
INGEST_LOG_BYTES_PER_BATCH = 1133  # batch line, EMF counts, two LeadLatency lines (less values)
INGEST_LOG_BYTES_PER_LEAD = 24  # each lead's two LeadLatency values
PLATFORM_LOG_BYTES = 330  # Lambda's own START, END and REPORT lines per invocation
ITEM_KB = 1.4  # a stored lead: raw Graph JSON (716 B on average in the demo) and its attributes

# --- assumptions ----------------------------------------------------------------------------
MEMORY_MB = 256  # the template's MemorySize
FULL_VCPU_MB = 1769  # Lambda gives one full vCPU at 1,769 MB, a share of it below
SQS_SEND_MS = 5  # one SendMessageBatch inside a region
GRAPH_BATCH_MS = 300  # one Graph batch call for a page's leads
DYNAMODB_PUT_MS = 8  # one conditional PutItem (a batch's puts run together)
LEADS_PER_POST = 1  # Meta posts one change at a time at ordinary volumes: the dear case
DELIVER_BATCH = 100  # the stream mapping's BatchSize, at volume
EVENTS_ON = True  # a LeadWebhookUrl rule forwarding every lead


def lambda_cost(invocations, billed_ms):
    return invocations * (LAMBDA_REQUEST + math.ceil(billed_ms) / 1000 * MEMORY_MB / 1024 * LAMBDA_GB_SECOND)


def main():
    global MEMORY_MB
    if len(sys.argv) > 2:
        MEMORY_MB = int(sys.argv[2])
    table()


def table():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    leads = 1_000_000
    share = MEMORY_MB / FULL_VCPU_MB
    rows = []

    posts = leads / LEADS_PER_POST
    webhook_ms = WEBHOOK_CPU_MS * LEADS_PER_POST / share + SQS_SEND_MS
    rows.append(("Lambda: webhook", f"{posts:,.0f} invocations, {math.ceil(webhook_ms)} ms billed each", lambda_cost(posts, webhook_ms)))

    batches = leads / batch
    ingest_ms = INGEST_CPU_MS_PER_LEAD * batch / share + GRAPH_BATCH_MS + DYNAMODB_PUT_MS
    rows.append(("Lambda: ingest", f"{batches:,.0f} invocations of {batch}, {math.ceil(ingest_ms)} ms billed each", lambda_cost(batches, ingest_ms)))

    sqs = posts + 2 * batches  # SendMessageBatch per post; the mapping's receive and delete per batch
    rows.append(("SQS", f"{sqs:,.0f} requests", sqs * SQS_REQUEST))

    wru = math.ceil(ITEM_KB) * 2 + 2  # the item, its by_form copy (ALL), email and phone keys
    rows.append(("DynamoDB writes", f"{wru} WRU a lead", leads * wru * DYNAMODB_WRU))

    delivers = leads / DELIVER_BATCH
    rows.append(("Lambda: deliver", f"{delivers:,.0f} invocations", lambda_cost(delivers, 50) if EVENTS_ON else 0))
    if EVENTS_ON:
        rows.append(("EventBridge + API destination", "one event and one call a lead", leads * (EVENTBRIDGE_EVENT + API_DESTINATION_CALL)))

    log_bytes = (
        posts * (WEBHOOK_LOG_BYTES + PLATFORM_LOG_BYTES)
        + batches * (INGEST_LOG_BYTES_PER_BATCH + PLATFORM_LOG_BYTES)
        + leads * INGEST_LOG_BYTES_PER_LEAD
        + delivers * (PLATFORM_LOG_BYTES + 600)
    )
    rows.append(("CloudWatch Logs", f"{log_bytes / leads:,.0f} bytes a lead", log_bytes / 1e9 * LOGS_GB))

    total = sum(cost for _, _, cost in rows)
    print(f"| per million leads (ingest batches of {batch}, {MEMORY_MB} MB) | what | USD |")
    print("|---|---|---|")
    for name, what, cost in rows:
        print(f"| {name} | {what} | {cost:,.2f} |")
    print(f"| **leadpipe on AWS** | | **{total:,.2f}** |")
    print(f"| Zapier (one task a lead: the trigger is free, one action) | {ZAPIER_TASK:.4f} a task | {leads * ZAPIER_TASK:,.0f} |")
    print(f"| Make (two credits a lead: the webhook trigger and one action) | {MAKE_CREDIT:.6f} a credit | {2 * leads * MAKE_CREDIT:,.0f} |")


if __name__ == "__main__":
    main()
