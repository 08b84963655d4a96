-- wrk script of bench/webhooks.py: realistic Telegram text updates, signed with the bot's secret header, each
-- with a fresh update_id (so the server's dedupe never short-circuits) and spread over many conversations.
--
--   wrk -t T -c C -d D -s bench/webhooks.lua URL -- SECRET FIRST_UPDATE_ID CHATS FIRST_CHAT_ID T
--
-- Thread k of T sends update ids FIRST + k, FIRST + k + T, ...: unique across threads. `done` prints one JSON
-- line (latencies in microseconds) for the bench to parse.

local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local template = '{"update_id":%d,"message":{"message_id":%d,'
  .. '"from":{"id":%d,"is_bot":false,"first_name":"Anna","last_name":"Smith","username":"anna_s",'
  .. '"language_code":"en"},"chat":{"id":%d,"first_name":"Anna","last_name":"Smith","username":"anna_s",'
  .. '"type":"private"},"date":%d,"text":"Hi, can I get a haircut tomorrow?"}}'

function init(args)
  headers = {
    ["Content-Type"] = "application/json",
    ["X-Telegram-Bot-Api-Secret-Token"] = args[1],
  }
  first_id = tonumber(args[2])
  chats = tonumber(args[3])
  first_chat = tonumber(args[4])
  stride = tonumber(args[5])
  sent = 0
end

function request()
  local update_id = first_id + sent * stride + thread_index
  sent = sent + 1
  local user = first_chat + update_id % chats
  local body = string.format(template, update_id, sent, user, user, os.time())
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
