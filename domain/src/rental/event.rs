use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
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
    /// The charge was paid.
    RentalPaid {
        /// Amount in cents (equal to the charge).
        amount_cents: i64,
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
        "1.0".to_string()
    }
}
