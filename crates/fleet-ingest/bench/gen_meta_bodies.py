#!/usr/bin/env python3
"""Pre-signs Meta webhook bodies for the wrk benchmark (wrk's Lua cannot compute HMAC fast).

Writes one line per request: `<X-Hub-Signature-256 value>\t<raw JSON body>`, each body a
single text message of about 1 KB with a unique wamid, so every request is a new enqueue
(not a duplicate). Usage: gen_meta_bodies.py COUNT SECRET OUT [RUN_ID]
"""
import hashlib
import hmac
import json
import sys

count, secret, out = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]
run = sys.argv[4] if len(sys.argv) > 4 else "bench"
filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12
with open(out, "w") as f:
    for i in range(count):
        body = json.dumps({
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Load Test"}, "wa_id": "1650555%04d" % (i % 10000)}],
                "messages": [{"from": "1650555%04d" % (i % 10000), "id": "wamid.%s.%09d" % (run, i),
                              "timestamp": "1749416383", "type": "text",
                              "text": {"body": "Caf\u00e9 \u2013 " + filler[: 560]}}]}}]}],
        }, separators=(",", ":"))  # ensure_ascii (default) escapes non-ASCII as Meta does
        sig = "sha256=" + hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
        f.write(sig + "\t" + body + "\n")
