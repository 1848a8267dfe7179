-- Which class of credential sent each inbound event (`owner`, `ingress_token`,
-- `worker_jwt`), so a session's audit shows who answered a permission request. Worker
-- output and events stored before this migration have none.
ALTER TABLE events ADD COLUMN sent_with TEXT;
