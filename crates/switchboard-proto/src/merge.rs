//! JSON Merge Patch (RFC 7396), used for the worker's `external_metadata`.

use serde_json::Value;

/// Applies `patch` to `target` as RFC 7396 says: objects merge key by key, a `null`
/// value deletes the key, anything else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn rfc_7396_examples_hold() {
        let mut doc = json!({"a":"b","c":{"d":"e","f":"g"}});
        merge_patch(&mut doc, &json!({"a":"z","c":{"f":null}}));
        assert_eq!(doc, json!({"a":"z","c":{"d":"e"}}));
        let mut doc = json!({"a":[1]});
        merge_patch(&mut doc, &json!({"a":{"b":"c"}}));
        assert_eq!(doc, json!({"a":{"b":"c"}}));
        let mut doc = json!(null);
        merge_patch(&mut doc, &json!({"pending_action":null,"model":"m"}));
        assert_eq!(doc, json!({"model":"m"}));
    }
}
