//! How domain events are stored: the payload is the variant's fields alone (the variant's name
//! is in `event_type`), so the audit log reads naturally and payloads can gain versions.
//!
//! Every path that turns a stored event back into a domain event (the aggregate loader, the
//! projection engine, the audit's state as of a time) goes through [`decode_event`], which first
//! runs the domain's upcasters, so an event stored in an older shape reads as the current one.
//! Stored payloads are never rewritten.

use std::sync::LazyLock;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::DomainEvent;
use serde_json::{Map, Value};

static UPCASTERS: LazyLock<Vec<Box<dyn EventUpcaster>>> = LazyLock::new(domain::upcasters);

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

/// Brings a stored payload of `event_version` to its event type's current shape.
pub fn upcast(event_type: &str, event_version: &str, payload: Value) -> Value {
    if !UPCASTERS.iter().any(|u| u.can_upcast(event_type, event_version)) {
        return payload;
    }
    let mut event = SerializedEvent::new(
        String::new(),
        0,
        String::new(),
        event_type.to_string(),
        event_version.to_string(),
        payload,
        Value::Null,
    );
    for upcaster in UPCASTERS.iter() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event.payload
}

/// The inverse of [`encode_event`], for a payload stored in any version: upcast, then decode.
pub fn decode_event<E: DomainEvent>(
    event_type: &str,
    event_version: &str,
    payload: &Value,
) -> Result<E, serde_json::Error> {
    if UPCASTERS.iter().any(|u| u.can_upcast(event_type, event_version)) {
        let mut tagged = Map::with_capacity(1);
        tagged.insert(event_type.to_string(), upcast(event_type, event_version, payload.clone()));
        return serde_json::from_value(Value::Object(tagged));
    }
    // The current shape: deserialize as if from `{event_type: payload}`, without copying the
    // payload into a tagged object first (the hot path of every projector).
    E::deserialize(Tagged { variant: event_type, payload })
}

/// [`decode_event`] for a payload as stored in text: in the current shape it is decoded straight
/// from the text, without a JSON tree between (the hot path of replays).
pub fn decode_event_str<E: DomainEvent>(
    event_type: &str,
    event_version: &str,
    payload: &str,
) -> Result<E, serde_json::Error> {
    if UPCASTERS.iter().any(|u| u.can_upcast(event_type, event_version)) {
        return decode_event(event_type, event_version, &serde_json::from_str(payload)?);
    }
    let mut fields = serde_json::Deserializer::from_str(payload);
    let event = E::deserialize(Tagged { variant: event_type, payload: &mut fields })?;
    fields.end()?;
    Ok(event)
}

/// An externally tagged enum value whose tag and fields are stored apart; the fields are read
/// from `payload`, a JSON tree or JSON text.
struct Tagged<'v, D> {
    variant: &'v str,
    payload: D,
}

impl<'de, D> serde::Deserializer<'de> for Tagged<'_, D>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de, D> serde::de::EnumAccess<'de> for Tagged<'_, D>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    type Error = serde_json::Error;
    type Variant = Fields<D>;

    fn variant_seed<S: serde::de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let variant =
            seed.deserialize(serde::de::value::StrDeserializer::<serde_json::Error>::new(self.variant))?;
        Ok((variant, Fields(self.payload)))
    }
}

/// The stored fields of a variant.
struct Fields<D>(D);

impl<'de, D> serde::de::VariantAccess<'de> for Fields<D>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        serde::Deserialize::deserialize(self.0)
    }

    fn newtype_variant_seed<S: serde::de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: serde::de::Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_seq(visitor)
    }

    fn struct_variant<V: serde::de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::movie::MovieEvent;
    use domain::rental::RentalEvent;
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
        let back: MovieEvent =
            decode_event(&encoded.event_type, &encoded.event_version, &encoded.payload).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_event_without_fields_has_an_empty_object_as_payload() {
        let encoded = encode_event(&MovieEvent::MovieRetired {}).unwrap();
        assert_eq!(encoded.payload, serde_json::json!({}));
        let back: MovieEvent = decode_event("MovieRetired", "1.0", &encoded.payload).unwrap();
        assert_eq!(back, MovieEvent::MovieRetired {});
    }

    #[test]
    fn decoding_in_place_agrees_with_decoding_a_tagged_copy() {
        let rental_id = Uuid::now_v7();
        let stored = [
            (
                "MovieRented",
                serde_json::json!({"rental_id": rental_id, "customer_id": Uuid::now_v7(), "rented_at": chrono::Utc::now()}),
            ),
            ("MovieRetired", serde_json::json!({})),
            ("MovieRented", serde_json::json!({"rental_id": rental_id})),
            (
                "MovieRented",
                serde_json::json!({"rental_id": "not a uuid", "customer_id": Uuid::now_v7(), "rented_at": chrono::Utc::now()}),
            ),
            ("NoSuchEvent", serde_json::json!({})),
            ("MovieRetired", serde_json::json!(7)),
        ];
        for (event_type, payload) in &stored {
            let in_place = decode_event::<MovieEvent>(event_type, "1.0", payload);
            let from_text = decode_event_str::<MovieEvent>(event_type, "1.0", &payload.to_string());
            let copied: Result<MovieEvent, _> =
                serde_json::from_value(serde_json::json!({ *event_type: payload.clone() }));
            for decoded in [&in_place, &from_text] {
                match (decoded, &copied) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{event_type} {payload}: decoded {decoded:?}, copied {copied:?}"),
                }
            }
        }
        // Text that is not one JSON value is refused, also with a valid value in front.
        assert!(decode_event_str::<MovieEvent>("MovieRetired", "1.0", "{} {}").is_err());
        assert!(decode_event_str::<MovieEvent>("MovieRetired", "1.0", "{").is_err());
        assert!(decode_event::<MovieEvent>("MovieRetired", "1.0", &serde_json::json!({})).is_ok());
        assert!(decode_event::<MovieEvent>("NoSuchEvent", "1.0", &serde_json::json!({})).is_err());
        assert!(decode_event::<MovieEvent>(
            "MovieRented",
            "1.0",
            &serde_json::json!({"rental_id": rental_id})
        )
        .is_err());
    }

    #[test]
    fn a_payment_stored_in_version_1_decodes_as_the_current_event() {
        let paid_at = chrono::Utc::now();
        let stored = serde_json::json!({ "amount_cents": 350, "paid_at": paid_at });
        let back: RentalEvent = decode_event("RentalPaid", "1.0", &stored).unwrap();
        assert_eq!(back, RentalEvent::RentalPaid { amount_cents: 350, currency: "EUR".into(), paid_at });
        let from_text: RentalEvent = decode_event_str("RentalPaid", "1.0", &stored.to_string()).unwrap();
        assert_eq!(from_text, back);
        let current = encode_event(&back).unwrap();
        assert_eq!(current.event_version, "2.0");
        let again: RentalEvent = decode_event("RentalPaid", "2.0", &current.payload).unwrap();
        assert_eq!(again, back);
    }
}
