"""The benchmark's Lambda handler: the same logic as http_app.py."""


def main(event, context):
    return {"ok": True, "n": event.get("n") if isinstance(event, dict) else None}
