use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{CategoryIds, Director, Rating, Storyline, Title};

/// What happened to a movie. Names and shapes are part of the audit contract: a change of shape
/// is a new version with an upcaster, never an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MovieEvent {
    /// The movie was added to the catalogue.
    MovieAdded {
        /// Title.
        title: Title,
        /// Storyline.
        storyline: Storyline,
        /// Release date.
        release_date: NaiveDate,
        /// Rating, 0..=10 with one decimal.
        rating: Rating,
        /// Director, when known.
        director: Option<Director>,
        /// Categories, 1..=5.
        category_ids: CategoryIds,
    },
    /// Some of the movie's details changed; only the changed fields are present.
    MovieUpdated {
        /// New title.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<Title>,
        /// New storyline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storyline: Option<Storyline>,
        /// New release date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release_date: Option<NaiveDate>,
        /// New rating.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rating: Option<Rating>,
        /// New director; present as `null` when it was cleared.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::serde_util::double_option")]
        director: Option<Option<Director>>,
        /// New categories.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        category_ids: Option<CategoryIds>,
    },
    /// The movie was retired: never listed or rented again, kept in history.
    MovieRetired {},
    /// The copy was rented.
    MovieRented {
        /// The rental's id (also the id of its `rental` stream).
        rental_id: Uuid,
        /// Who rented it.
        customer_id: Uuid,
        /// When the rental started (business time).
        rented_at: DateTime<Utc>,
    },
    /// The copy came back.
    MovieReturned {
        /// The rental that ended.
        rental_id: Uuid,
        /// Who had rented it.
        customer_id: Uuid,
        /// When it came back (business time).
        returned_at: DateTime<Utc>,
    },
}

impl DomainEvent for MovieEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MovieAdded { .. } => "MovieAdded",
            Self::MovieUpdated { .. } => "MovieUpdated",
            Self::MovieRetired {} => "MovieRetired",
            Self::MovieRented { .. } => "MovieRented",
            Self::MovieReturned { .. } => "MovieReturned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}
