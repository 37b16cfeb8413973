"""Handlers the local-Lambda tests deploy (zipped as a user would). Each shows one behaviour."""

import os
import time


def echo(event, context):
    print("echo", event)
    return {
        "event": event,
        "pid": os.getpid(),
        "runtime": context.log_stream_name,  # one per execution environment, as on AWS
        "memory": context.memory_limit_in_mb,
        "function": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {name: os.environ.get(name) for name in event.get("env", [])},
    }


def sleep(event, context):
    time.sleep(event["seconds"])
    return {"pid": os.getpid(), "runtime": context.log_stream_name}


def fail(event, context):
    raise ValueError(f"bad value {event.get('x')}")


def crash(event, context):
    print("about to crash")
    os._exit(3)


def allocate(event, context):
    blocks = []
    for _ in range(event["mb"] // 8):
        blocks.append(b"x" * (8 * 1024 * 1024))
        time.sleep(0.005)
    return {"allocated_mb": 8 * len(blocks)}


def big_response(event, context):
    return "x" * event["size"]


def chatty(event, context):
    for i in range(event["lines"]):
        print(f"line {i:05d} " + "." * 60)
    return "done"


def s3_roundtrip(event, context):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=event["bucket"], Key=event["key"], Body=event["body"].encode())
    return s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read().decode()


def use_layer(event, context):
    import layered  # only in the layer

    return layered.VALUE
