use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::price::PricePlan;

/// What happened to a rental. Names and shapes are part of the audit contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RentalEvent {
    /// The rental was opened.
    RentalOpened {
        /// The movie rented.
        movie_id: Uuid,
        /// The customer.
        customer_id: Uuid,
        /// When it started.
        rented_at: DateTime<Utc>,
    },
    /// The copy came back.
    RentalClosed {
        /// When.
        returned_at: DateTime<Utc>,
    },
    /// The charge was computed from the rental's own times.
    ChargeAssessed {
        /// Started 24-hour periods, at least 1.
        days: u32,
        /// Amount in cents.
        amount_cents: i64,
        /// ISO 4217 currency code.
        currency: String,
        /// The plan that priced it.
        plan: PricePlan,
    },
    /// The charge was paid. Version 2.0 added `currency` (money is an amount and a currency);
    /// version 1.0 payloads are upcast by [`upcasters`].
    RentalPaid {
        /// Amount in cents (equal to the charge).
        amount_cents: i64,
        /// ISO 4217 currency code (the charge's).
        currency: String,
        /// When.
        paid_at: DateTime<Utc>,
    },
}

impl DomainEvent for RentalEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RentalOpened { .. } => "RentalOpened",
            Self::RentalClosed { .. } => "RentalClosed",
            Self::ChargeAssessed { .. } => "ChargeAssessed",
            Self::RentalPaid { .. } => "RentalPaid",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            Self::RentalPaid { .. } => RENTAL_PAID_VERSION,
            _ => "1.0",
        }
        .to_string()
    }
}

/// The current schema version of `RentalPaid`.
pub const RENTAL_PAID_VERSION: &str = "2.0";

/// The currency of every `RentalPaid` 1.0: that version was written only while the one price
/// plan charged in euros, and a payment always equals its charge.
const RENTAL_PAID_V1_CURRENCY: &str = "EUR";

/// The upcasters of rental events: each turns a stored payload of an older version into the
/// current shape before it is decoded. `RentalPaid` 1.0 (`{amount_cents, paid_at}`) gains
/// `currency`.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "RentalPaid",
        RENTAL_PAID_VERSION,
        Box::new(|payload| match payload {
            Value::Object(mut fields) => {
                fields.entry("currency").or_insert_with(|| Value::from(RENTAL_PAID_V1_CURRENCY));
                Value::Object(fields)
            }
            other => other,
        }),
    ))]
}
