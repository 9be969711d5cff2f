//! How domain events are stored: the payload is the variant's fields alone (the variant's name
//! is in `event_type`), so the audit log reads naturally and payloads can gain versions.

use cqrs_es::DomainEvent;
use serde_json::{Map, Value};

/// An event ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// The variant's name, e.g. `MovieRented`.
    pub event_type: String,
    /// The payload's schema version, e.g. `1.0`.
    pub event_version: String,
    /// The variant's fields.
    pub payload: Value,
}

/// Splits a serde-tagged event (`{"MovieRented": {...}}`) into its type and fields.
pub fn encode_event<E: DomainEvent>(event: &E) -> Result<EncodedEvent, serde_json::Error> {
    let event_type = event.event_type();
    let payload = match serde_json::to_value(event)? {
        Value::Object(mut tagged) if tagged.len() == 1 && tagged.contains_key(&event_type) => {
            tagged.remove(&event_type).unwrap_or(Value::Null)
        }
        other => other,
    };
    Ok(EncodedEvent { event_type, event_version: event.event_version(), payload })
}

/// The inverse of [`encode_event`].
pub fn decode_event<E: DomainEvent>(event_type: &str, payload: &Value) -> Result<E, serde_json::Error> {
    let mut tagged = Map::with_capacity(1);
    tagged.insert(event_type.to_string(), payload.clone());
    serde_json::from_value(Value::Object(tagged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::movie::MovieEvent;
    use uuid::Uuid;

    #[test]
    fn payloads_are_the_fields_alone_and_decode_back() {
        let event = MovieEvent::MovieRented {
            rental_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            rented_at: chrono::Utc::now(),
        };
        let encoded = encode_event(&event).unwrap();
        assert_eq!(encoded.event_type, "MovieRented");
        assert_eq!(encoded.event_version, "1.0");
        assert!(encoded.payload.get("rental_id").is_some());
        let back: MovieEvent = decode_event(&encoded.event_type, &encoded.payload).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_event_without_fields_has_an_empty_object_as_payload() {
        let encoded = encode_event(&MovieEvent::MovieRetired {}).unwrap();
        assert_eq!(encoded.payload, serde_json::json!({}));
        let back: MovieEvent = decode_event("MovieRetired", &encoded.payload).unwrap();
        assert_eq!(back, MovieEvent::MovieRetired {});
    }
}
