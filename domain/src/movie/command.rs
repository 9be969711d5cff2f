use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::MovieDetails;
use crate::values::{CategoryIds, Director, Rating, Storyline, Title};
use crate::Actor;

/// A partial update of a movie: `None` leaves a field as it is. `director: Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MovieChanges {
    /// New title.
    pub title: Option<Title>,
    /// New storyline.
    pub storyline: Option<Storyline>,
    /// New release date.
    pub release_date: Option<chrono::NaiveDate>,
    /// New rating.
    pub rating: Option<Rating>,
    /// New director, or `Some(None)` to clear it.
    pub director: Option<Option<Director>>,
    /// New categories.
    pub category_ids: Option<CategoryIds>,
}

impl MovieChanges {
    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What can be asked of a movie. Times and ids are stamped by the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum MovieCommand {
    /// Add the movie to the catalogue.
    AddMovie {
        /// Its details.
        details: MovieDetails,
    },
    /// Change some of the movie's details.
    UpdateMovie {
        /// The fields to change.
        changes: MovieChanges,
    },
    /// Take the movie out of the catalogue for good (it stays in history).
    RetireMovie,
    /// Rent the movie's copy to a customer.
    RentMovie {
        /// The new rental's id.
        rental_id: Uuid,
        /// The customer who takes the copy.
        customer_id: Uuid,
        /// When the rental starts (an admin may give a past time).
        rented_at: DateTime<Utc>,
        /// The current time, to refuse business times in the future.
        now: DateTime<Utc>,
    },
    /// Bring the copy back.
    ReturnMovie {
        /// The rental being closed.
        rental_id: Uuid,
        /// Who returns it: the renter or an admin.
        by: Actor,
        /// When the copy came back (an admin may give a past time).
        returned_at: DateTime<Utc>,
        /// The current time, to refuse business times in the future.
        now: DateTime<Utc>,
    },
}
