use chrono::{DateTime, Duration, Utc};
use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::price::PricePlan;

/// What happened to a rental. Names and shapes are part of the audit contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RentalEvent {
    /// The rental was opened. Version 2.0 added `due_at`; version 1.0 payloads are upcast by
    /// [`upcasters`] with the loan of that time, 7 days.
    RentalOpened {
        /// The movie rented.
        movie_id: Uuid,
        /// The customer.
        customer_id: Uuid,
        /// When it started.
        rented_at: DateTime<Utc>,
        /// When it is due back (the loan policy applied to `rented_at`).
        due_at: DateTime<Utc>,
    },
    /// The rental was still active at its due time.
    RentalOverdue {
        /// The due time it passed.
        due_at: DateTime<Utc>,
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
            Self::RentalOverdue { .. } => "RentalOverdue",
            Self::RentalClosed { .. } => "RentalClosed",
            Self::ChargeAssessed { .. } => "ChargeAssessed",
            Self::RentalPaid { .. } => "RentalPaid",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            Self::RentalOpened { .. } => RENTAL_OPENED_VERSION,
            Self::RentalPaid { .. } => RENTAL_PAID_VERSION,
            _ => "1.0",
        }
        .to_string()
    }
}

/// The current schema version of `RentalOpened`.
pub const RENTAL_OPENED_VERSION: &str = "2.0";

/// The current schema version of `RentalPaid`.
pub const RENTAL_PAID_VERSION: &str = "2.0";

/// The currency of every `RentalPaid` 1.0: that version was written only while the one price
/// plan charged in euros, and a payment always equals its charge.
const RENTAL_PAID_V1_CURRENCY: &str = "EUR";

/// The loan of every `RentalOpened` 1.0: that version was written while rentals were due 7 days
/// after they started.
const RENTAL_OPENED_V1_LOAN_DAYS: i64 = 7;

/// The upcasters of rental events: each turns a stored payload of an older version into the
/// current shape before it is decoded. `RentalPaid` 1.0 (`{amount_cents, paid_at}`) gains
/// `currency`; `RentalOpened` 1.0 (`{movie_id, customer_id, rented_at}`) gains `due_at`, 7 days
/// (the loan of that time) after `rented_at`.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![
        Box::new(SemanticVersionEventUpcaster::new(
            "RentalPaid",
            RENTAL_PAID_VERSION,
            Box::new(|payload| match payload {
                Value::Object(mut fields) => {
                    fields.entry("currency").or_insert_with(|| Value::from(RENTAL_PAID_V1_CURRENCY));
                    Value::Object(fields)
                }
                other => other,
            }),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            "RentalOpened",
            RENTAL_OPENED_VERSION,
            Box::new(|payload| match payload {
                Value::Object(mut fields) if !fields.contains_key("due_at") => {
                    // A payload whose `rented_at` does not parse is left without `due_at`, so it
                    // fails to decode and names the broken field, as any corrupt payload does.
                    let due_at = fields
                        .get("rented_at")
                        .and_then(Value::as_str)
                        .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
                        .and_then(|rented_at| {
                            rented_at
                                .with_timezone(&Utc)
                                .checked_add_signed(Duration::days(RENTAL_OPENED_V1_LOAN_DAYS))
                        });
                    if let Some(due_at) = due_at.and_then(|due_at| serde_json::to_value(due_at).ok()) {
                        fields.insert("due_at".to_string(), due_at);
                    }
                    Value::Object(fields)
                }
                other => other,
            }),
        )),
    ]
}
