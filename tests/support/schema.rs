//! Validating messages against the published contract, `docs/check-v1.schema.json`, with a
//! third-party JSON Schema validator (the `jsonschema` crate).

use std::sync::OnceLock;

use serde_json::Value;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/check-v1.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .expect("the schema is JSON");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the schema is a valid draft 2020-12 schema")
    })
}

/// Panics, listing every violation, unless `message` is a valid schema v1 message.
pub fn assert_valid(message: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(message)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not valid against docs/check-v1.schema.json: {errors:#?}\n{message:#}"
    );
}
