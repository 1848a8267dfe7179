-- The address (scheme://host[:port]) the owner's browser used when it set a notification
-- channel or subscribed to Web Push: the links in that channel's notifications start
-- there when no --public-url is configured, never at whatever host a worker addressed.
ALTER TABLE notify_channels ADD COLUMN origin TEXT;
ALTER TABLE push_subscriptions ADD COLUMN origin TEXT;
