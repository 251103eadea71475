"""A Lambda handler as it would run on AWS (the tests run it with awslambdaric, unchanged)."""
import json
import os
import time


def main(event, context):
    if os.environ.get("FAIL") == "1":
        raise RuntimeError("failing on purpose (FAIL=1)")
    action = event.get("action") if isinstance(event, dict) else None
    if action == "fail":
        raise ValueError("requested failure")
    if action == "crash":
        os._exit(3)
    if action == "print":
        print(f"printing for {context.aws_request_id}", flush=True)
    if action == "sleep":
        time.sleep(event.get("ms", 0) / 1000)
    if isinstance(event, dict) and "rawPath" in event:
        sleep_ms = (event.get("queryStringParameters") or {}).get("sleep_ms")
        if sleep_ms:
            time.sleep(int(sleep_ms) / 1000)
        return {
            "statusCode": 201,
            "headers": {"content-type": "application/json", "x-handler": "python"},
            "cookies": ["visited=1", "theme=dark"],
            "body": json.dumps(
                {
                    "path": event["rawPath"],
                    "query": event.get("queryStringParameters"),
                    "method": event["requestContext"]["http"]["method"],
                    "body": event.get("body"),
                    "base64": event.get("isBase64Encoded"),
                    "trace": os.environ.get("_X_AMZN_TRACE_ID"),
                }
            ),
        }
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "function": context.function_name,
        "version": context.function_version,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "region": os.environ.get("AWS_REGION"),
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }
