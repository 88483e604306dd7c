"""Runs for each PNG written to the `uploads` bucket (a bucket trigger delivers the S3 event):
makes a thumbnail into `thumbnails`, records the image's metadata in the `images` KV namespace,
and sends a message to the `indexed` queue for the indexer. boto3 finds its endpoint and
credentials in the environment nimbus gives every instance; `import nimbus` ships with the
runtime."""

import json
import os
import urllib.parse

import boto3
import nimbus

import png

THUMB_SIZE = int(os.environ.get("THUMB_SIZE", "64"))
s3 = boto3.client("s3")
sqs = boto3.client("sqs")
images = nimbus.kv("images")
queue_url = sqs.get_queue_url(QueueName="indexed")["QueueUrl"]


def handler(event, context):
    done = []
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        meta = {"key": key, "bytes": len(data), "etag": record["s3"]["object"].get("eTag")}
        try:
            width, height, channels, rows = png.decode(data)
            w, h, small = png.thumbnail(width, height, channels, rows, THUMB_SIZE)
            s3.put_object(Bucket="thumbnails", Key=key, Body=png.encode(w, h, channels, small), ContentType="image/png")
            meta.update(width=width, height=height, thumbnail=f"thumbnails/{key}", thumbWidth=w, thumbHeight=h)
        except ValueError as e:
            # Not a PNG we can read: recorded, and passed on so the indexer sees it too.
            meta["error"] = str(e)
        images.put(key, json.dumps(meta))
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(meta))
        print(f"{key}: {meta.get('error') or f'{width}x{height} -> {w}x{h}'}")
        done.append(key)
    return {"processed": done}
