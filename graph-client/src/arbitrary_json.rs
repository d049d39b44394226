//! Test support: arbitrary JSON for the property tests of the parsers of what Graph
//! sends (notifications, delta pages).

use proptest::prelude::*;
use serde_json::Value;

/// JSON up to four levels deep whose object keys are often one of `keys` and whose
/// strings are often one of `strings`, with other values anywhere.
pub(crate) fn json_value(
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 ]{0,12}".prop_map(Value::String),
        prop::sample::select(strings).prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(keys).prop_map(str::to_owned),
                    "[a-z]{1,6}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
