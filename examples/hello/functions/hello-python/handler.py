"""GET /py/hello/{name} -> {"message": "Hello, <name>!", "runtime": "python"}"""

import json
import os


def handler(event, context):
    name = (event.get("pathParameters") or {}).get("name") or "world"
    greeting = os.environ.get("GREETING", "Hello")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"{greeting}, {name}!", "runtime": "python"}),
    }
