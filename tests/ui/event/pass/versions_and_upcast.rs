//! Two schema versions of one event: a stored v1 payload decodes into the current type
//! through the declared upcast; an unknown version and a drifted payload are clear errors.
#![deny(warnings)]

use pupsource::{DecodeError, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "UserCreated", version = 1)]
struct UserCreatedV1 {
    email: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 2, upcast_from = UserCreatedV1)]
struct UserCreated {
    email: String,
    display_name: String,
}

impl From<UserCreatedV1> for UserCreated {
    fn from(v1: UserCreatedV1) -> Self {
        let display_name = v1.email.split('@').next().unwrap_or_default().to_owned();
        UserCreated { email: v1.email, display_name }
    }
}

fn main() {
    assert_eq!((UserCreated::NAME, UserCreated::VERSION), ("UserCreated", 2));
    let upcast = UserCreated::decode_payload(&json!({ "email": "ada@example.com" }), 1).expect("v1");
    assert_eq!(upcast, UserCreated { email: "ada@example.com".into(), display_name: "ada".into() });

    let current = json!({ "email": "b@example.com", "display_name": "B" });
    assert_eq!(UserCreated::decode_payload(&current, 2).expect("v2").display_name, "B");

    let unknown = UserCreated::decode_payload(&current, 3).expect_err("v3");
    assert!(matches!(unknown, DecodeError::UnknownVersion { version: 3, current: 2, .. }));
    let drifted = UserCreated::decode_payload(&json!({ "mail": 1 }), 2).expect_err("drift");
    assert!(drifted.to_string().starts_with("payload of `UserCreated` v2 does not match its type"));

    let event = UserCreated { email: "c@example.com".into(), display_name: "C".into() }
        .to_event("42")
        .expect("serializable");
    assert_eq!((event.event_type.as_str(), event.event_version), ("UserCreated", 2));
    assert_eq!(event.stream.context, "Identity");
}
