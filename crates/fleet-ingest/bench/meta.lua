-- wrk script: POSTs pre-signed Meta webhook bodies (see gen_meta_bodies.py); each thread takes
-- its own shard of the file, so no two requests carry the same wamid (every one is a new enqueue).
-- Usage: wrk -t2 -c64 -d10s --latency -s meta.lua http://127.0.0.1:8080 -- bodies.txt acme 2
-- (script args: bodies file, tenant, number of wrk threads).
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local file, tenant, shards = args[1] or "bodies.txt", args[2] or "acme", tonumber(args[3] or "1")
  requests = {}
  local i, n = 0, 0
  for line in io.lines(file) do
    if i % shards == id then
      local sig, body = line:match("^([^\t]+)\t(.*)$")
      n = n + 1
      requests[n] = wrk.format("POST", "/webhooks/meta/" .. tenant,
        {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
    end
    i = i + 1
  end
  total, next_i = n, 0
end

function request()
  next_i = next_i + 1
  if next_i > total then next_i = 1 end  -- wraps to duplicates only if the file runs out
  return requests[next_i]
end
