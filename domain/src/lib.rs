//! The write model of the movie store: aggregates, their commands, events and errors, the price
//! plan and the value objects commands are made of.
//!
//! This crate does no IO. Time and ids arrive inside commands, stamped by the caller, so every
//! aggregate is deterministic and replaying its events always gives the same state. Nothing here
//! knows about HTTP, SQL or Redis (CI checks the dependency tree).
//!
//! Map:
//! - [`values`]: validated value objects (`Title`, `Rating`, ...) with parsing constructors.
//! - [`price`]: the price plan and the charge it assesses.
//! - [`loan`]: the loan policy, which fixes when a rental is due.
//! - [`movie`], [`rental`], [`category`]: one folder per aggregate.
//! - [`name_key`]: the key usernames, emails and category names compare by.
//! - [`Actor`]: who issues a command, as far as the rules care.
#![warn(missing_docs)]

/// Every event type the product records, as `event_type()` names them: the event catalogue.
pub const EVENT_TYPES: [&str; 12] = [
    "MovieAdded",
    "MovieUpdated",
    "MovieRetired",
    "MovieRented",
    "MovieReturned",
    "RentalOpened",
    "RentalOverdue",
    "RentalClosed",
    "ChargeAssessed",
    "RentalPaid",
    "CategoryCreated",
    "CategoryRenamed",
];

pub mod category;
pub mod loan;
pub mod movie;
pub mod name_key;
pub mod price;
pub mod rental;
pub mod values;

mod serde_util;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every upcaster of the product's events, to run on a stored event before it is decoded (event
/// type names are unique across streams, so one list serves every stream).
pub fn upcasters() -> Vec<Box<dyn cqrs_es::persist::EventUpcaster>> {
    rental::upcasters()
}

/// Who issues a command, as far as the domain's rules care: ownership checks let an admin act on
/// behalf of any customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The account id.
    pub id: Uuid,
    /// Whether the account is an admin (may act for any customer).
    pub is_admin: bool,
}

impl Actor {
    /// A customer acting for themself.
    pub fn customer(id: Uuid) -> Self {
        Self { id, is_admin: false }
    }

    /// An admin, who may act on behalf of any customer.
    pub fn admin(id: Uuid) -> Self {
        Self { id, is_admin: true }
    }

    /// Whether this actor may act on a resource that belongs to `owner`.
    pub fn may_act_for(&self, owner: Uuid) -> bool {
        self.is_admin || self.id == owner
    }
}
