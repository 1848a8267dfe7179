-- An append in one round trip (issue "Several servers": PostgreSQL within 2× of
-- SQLite). The rules of `PgStore::append_events` as a function the server calls in one
-- statement: lock the session row, store each event unless its uuid is already in the
-- log (then answer the existing sequence number), store each stored event's audit entry
-- with it (its detail given the event's sequence_num), move the session's last_seq and
-- send the notice the other nodes follow, at commit. `events` is a JSON array of
-- objects with the event's columns and an optional `audit` object.
CREATE FUNCTION switchboard_append(p_session TEXT, p_events JSONB, p_now BIGINT, p_channel TEXT)
RETURNS TABLE (seq BIGINT, duplicate BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_last BIGINT;
    v_event JSONB;
    v_audit JSONB;
    v_found BIGINT;
    v_stored BOOLEAN := FALSE;
BEGIN
    SELECT s.last_seq INTO v_last FROM sessions s WHERE s.id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', p_session USING ERRCODE = 'P0002';
    END IF;
    FOR v_event IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        v_found := NULL;
        IF v_event->>'uuid' IS NOT NULL THEN
            SELECT e.seq INTO v_found FROM events e
             WHERE e.session_id = p_session AND e.uuid = v_event->>'uuid';
        END IF;
        IF v_found IS NOT NULL THEN
            seq := v_found;
            duplicate := TRUE;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_last := v_last + 1;
        INSERT INTO events (session_id, seq, direction, kind, uuid, payload, created_at,
                            request_id, sent_with)
        VALUES (p_session, v_last, v_event->>'direction', v_event->>'kind',
                v_event->>'uuid', v_event->>'payload', p_now, v_event->>'request_id',
                v_event->>'sent_with');
        v_audit := v_event->'audit';
        IF jsonb_typeof(v_audit) = 'object' THEN
            INSERT INTO audit_log (owner_id, at, action, credential_id, address, user_agent,
                                   session_id, detail)
            VALUES (v_audit->>'owner_id', (v_audit->>'at')::BIGINT, v_audit->>'action',
                    v_audit->>'credential_id', v_audit->>'address', v_audit->>'user_agent',
                    v_audit->>'session_id',
                    CASE WHEN jsonb_typeof((v_audit->>'detail')::JSONB) = 'object'
                         THEN ((v_audit->>'detail')::JSONB
                               || jsonb_build_object('sequence_num', v_last))::TEXT
                         ELSE v_audit->>'detail' END);
        END IF;
        v_stored := TRUE;
        seq := v_last;
        duplicate := FALSE;
        RETURN NEXT;
    END LOOP;
    IF v_stored THEN
        UPDATE sessions SET last_seq = v_last, last_activity_at = p_now WHERE id = p_session;
        PERFORM pg_notify(p_channel, p_session || ' ' || v_last);
    END IF;
END
$$;
