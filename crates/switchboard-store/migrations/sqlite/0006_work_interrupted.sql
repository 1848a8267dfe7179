-- A work item stopped with `force: true` (docs/PROTOCOL.md §4.5) was cut short by its bridge
-- shutting down, not finished by its worker: the official bridge stops the work of the
-- sessions still running when it exits, keeps the environment, and expects those
-- sessions back as work when it registers again with the same environment_id.
ALTER TABLE work_items ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
