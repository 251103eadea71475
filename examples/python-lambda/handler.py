"""An AWS Lambda handler, exactly as it would be deployed to AWS.

Nubo runs it with the official runtime client, `python3 -m awslambdaric handler.main`: the
client fetches each event from the Runtime API Nubo serves to this instance and calls `main`.
"""
import base64
import json
import os


def main(event, context):
    # HTTP requests (`/fn/<function>/...`, the manifest's routes, `nubo invoke`) arrive as API
    # Gateway HTTP API payload 2.0 events, the events a Lambda function URL sends.
    if isinstance(event, dict) and "rawPath" in event:
        name = http_name(event)
        print(f"{event['requestContext']['http']['method']} {event['rawPath']} for {name}")
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json"},
            "body": json.dumps(
                {
                    "message": f"Hello, {name}!",
                    "path": event["rawPath"],
                    "request_id": context.aws_request_id,
                }
            ),
        }
    # Anything else (the Invoke API, AWS CLI and SDKs, async invocations, cron) is the JSON
    # event as sent; the return value is the result.
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"event for {name}")
    return {
        "message": f"Hello, {name}!",
        "function": context.function_name,
        "version": context.function_version,
        "memory_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "region": os.environ.get("AWS_REGION"),
    }


def http_name(event):
    """`?name=` from the query string, else `name` from a JSON body, else "world"."""
    query = event.get("queryStringParameters") or {}
    if query.get("name"):
        return query["name"]
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    try:
        return json.loads(body).get("name") or "world"
    except (ValueError, AttributeError):
        return "world"
