//! Property-based tests of the protocol's parsing: whatever arrives, `normalize_inbound`
//! answers (never panics) and what it accepts is stable; ids are safe exactly when they
//! match `^[a-zA-Z0-9_-]+$` and session ids survive both costumes; JSON Merge Patch
//! (RFC 7396) is idempotent, deletes with `null` and leaves other keys alone.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use switchboard_proto::merge::merge_patch;
use switchboard_proto::messages::{normalize_inbound, PERMISSION_MODES, VIEWER_CONTROL_SUBTYPES};
use switchboard_proto::{is_safe_id, SessionId};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        // Integers only: serde_json (without `float_roundtrip`) may print a float that
        // reads back one ulp off, which is not the parser's property under test here.
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn one_of(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(words).prop_map(|w| Value::String(w.to_string())),
        any_json(),
    ]
}

/// Messages near the shape a viewer sends: right and wrong types, roles, contents,
/// subtypes, ids, each field sometimes missing and sometimes anything at all.
fn viewer_message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        ".{0,20}".prop_map(Value::String),
        prop::collection::vec(
            prop_oneof![
                ".{0,10}".prop_map(|t| json!({"type": "text", "text": t})),
                any_json()
            ],
            0..4
        )
        .prop_map(Value::Array),
        any_json(),
    ];
    let message = (one_of(&["user", "assistant"]), content)
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    let request = (
        one_of(&[
            "interrupt",
            "set_model",
            "set_permission_mode",
            "set_max_thinking_tokens",
            "initialize",
            "end_session",
            "can_use_tool",
        ]),
        one_of(&["default", "acceptEdits", "plan", "nope"]),
        prop_oneof![any::<u32>().prop_map(Value::from), any_json()],
        one_of(&["claude-sonnet-4-5", ""]),
    )
        .prop_map(|(subtype, mode, tokens, model)| {
            json!({"subtype": subtype, "mode": mode, "max_thinking_tokens": tokens, "model": model})
        });
    let response = (
        one_of(&["success", "error"]),
        one_of(&["allow", "deny"]),
        any_json(),
    )
        .prop_map(|(subtype, behavior, extra)| {
            json!({"subtype": subtype, "request_id": "r1",
                   "response": {"behavior": behavior, "updatedInput": extra, "message": "no"}})
        });
    (
        one_of(&[
            "user",
            "control_request",
            "control_response",
            "control_cancel_request",
            "assistant",
        ]),
        prop::option::of(message),
        prop::option::of(request),
        prop::option::of(response),
        prop::option::of(one_of(&["u-1", ""])),
        prop::option::of(one_of(&["req-1", ""])),
        any::<bool>(),
    )
        .prop_map(
            |(kind, message, request, response, uuid, request_id, camel)| {
                let mut o = Map::new();
                o.insert("type".into(), kind);
                for (k, v) in [
                    ("message", message),
                    ("request", request),
                    ("response", response),
                    ("uuid", uuid),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                }
                if let Some(id) = request_id {
                    o.insert(if camel { "requestId" } else { "request_id" }.into(), id);
                }
                Value::Object(o)
            },
        )
}

fn fresh() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("uuid-{n}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn normalize_inbound_answers_anything_and_what_it_accepts_is_stable(
        msg in prop_oneof![any_json(), viewer_message()]
    ) {
        // Never panics; when it accepts, the result is an object that goes over the wire
        // and comes back the same, and normalizing it again changes nothing.
        if let Ok(out) = normalize_inbound(msg, &mut fresh()) {
            prop_assert!(out.is_object());
            prop_assert!(out["type"].is_string());
            let wire = serde_json::to_string(&out).unwrap();
            let back: Value = serde_json::from_str(&wire).unwrap();
            prop_assert_eq!(&back, &out);
            let again = normalize_inbound(back, &mut fresh());
            prop_assert_eq!(again.as_ref(), Ok(&out));
            // Control requests carry `request_id` under that name.
            if matches!(out["type"].as_str(), Some("control_request" | "control_cancel_request")) {
                prop_assert!(out.get("requestId").is_none());
            }
            match out["type"].as_str().unwrap() {
                "user" => {
                    prop_assert_eq!(&out["message"]["role"], "user");
                    prop_assert!(out["uuid"].as_str().is_some_and(|u| !u.is_empty()));
                    prop_assert!(out.get("parent_tool_use_id").is_some());
                }
                "control_request" => {
                    let subtype = out["request"]["subtype"].as_str().unwrap();
                    prop_assert!(VIEWER_CONTROL_SUBTYPES.contains(&subtype));
                    if subtype == "set_permission_mode" {
                        prop_assert!(PERMISSION_MODES.contains(&out["request"]["mode"].as_str().unwrap()));
                    }
                }
                "control_response" | "control_cancel_request" => {}
                other => prop_assert!(false, "accepted a {other:?} event"),
            }
        }
    }

    #[test]
    fn an_id_is_safe_exactly_when_every_character_is_allowed(s in ".{0,24}") {
        let expected = !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        prop_assert_eq!(is_safe_id(&s), expected);
    }

    #[test]
    fn safe_ids_stay_safe_and_one_bad_character_spoils_them(
        id in "[a-zA-Z0-9_-]{1,32}",
        at in any::<prop::sample::Index>(),
        bad in "[^a-zA-Z0-9_-]",
    ) {
        prop_assert!(is_safe_id(&id));
        let mut spoiled = id.clone();
        spoiled.insert_str(at.index(id.len() + 1).min(id.len()), &bad);
        prop_assert!(!is_safe_id(&spoiled));
    }

    #[test]
    fn session_ids_round_trip_through_both_costumes(body in "[a-zA-Z0-9_-]{4,40}") {
        let id = SessionId::from_body(body.clone()).unwrap();
        prop_assert_eq!(id.body(), body.as_str());
        prop_assert_eq!(SessionId::parse(&id.cse()), Some(id.clone()));
        prop_assert_eq!(SessionId::parse(&id.compat()), Some(id.clone()));
        prop_assert_eq!(id.to_string(), id.compat());
        prop_assert!(is_safe_id(&id.cse()) && is_safe_id(&id.compat()));
    }

    #[test]
    fn whatever_parses_as_a_session_id_is_one_of_its_costumes(s in "(cse_|session_|)[ -~]{0,20}") {
        if let Some(id) = SessionId::parse(&s) {
            prop_assert!(s == id.cse() || s == id.compat(), "{s:?} parsed as {id:?}");
            prop_assert!(is_safe_id(id.body()) && id.body().len() >= 4);
        }
    }

    #[test]
    fn merging_a_patch_twice_is_merging_it_once(target in any_json(), patch in any_json()) {
        let mut once = target.clone();
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn a_patch_object_sets_deletes_and_leaves_the_rest(target in any_json(), patch in any_json()) {
        let mut merged = target.clone();
        merge_patch(&mut merged, &patch);
        match &patch {
            Value::Object(p) => {
                let m = merged.as_object().expect("an object patch makes an object");
                for (key, value) in p {
                    match value {
                        // null deletes the key.
                        Value::Null => prop_assert!(!m.contains_key(key)),
                        // Objects merge (recursively); anything else replaces.
                        Value::Object(_) => prop_assert!(m[key].is_object()),
                        other => prop_assert_eq!(&m[key], other),
                    }
                }
                // Keys the patch does not name keep their values.
                if let Value::Object(t) = &target {
                    for (key, value) in t {
                        if !p.contains_key(key) {
                            prop_assert_eq!(&m[key], value);
                        }
                    }
                }
                // A merged document holds no nulls the patch put there.
                prop_assert!(no_null_from(p, m));
            }
            // Anything but an object replaces the whole document.
            other => prop_assert_eq!(&merged, other),
        }
    }

    #[test]
    fn a_patch_merged_into_nothing_is_the_patch_without_its_nulls(patch in any_json()) {
        let mut merged = Value::Null;
        merge_patch(&mut merged, &patch);
        prop_assert_eq!(merged, without_nulls(&patch));
    }
}

fn no_null_from(patch: &Map<String, Value>, merged: &Map<String, Value>) -> bool {
    patch.iter().all(|(k, v)| match (v, merged.get(k)) {
        (Value::Object(p), Some(Value::Object(m))) => no_null_from(p, m),
        (Value::Object(_), _) => false,
        (_, Some(Value::Null)) => false,
        _ => true,
    })
}

/// What merging `patch` into an empty document gives, written independently: objects
/// lose their null members, recursively; other values stay as they are.
fn without_nulls(patch: &Value) -> Value {
    match patch {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
