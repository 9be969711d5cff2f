use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{MovieChanges, MovieCommand, MovieError, MovieEvent};
use crate::values::{CategoryIds, Director, Rating, Storyline, Title};

/// The descriptive part of a movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieDetails {
    /// Title.
    pub title: Title,
    /// Storyline.
    pub storyline: Storyline,
    /// Release date.
    pub release_date: NaiveDate,
    /// Rating.
    pub rating: Rating,
    /// Director, when known.
    pub director: Option<Director>,
    /// Categories.
    pub category_ids: CategoryIds,
}

/// The rental that holds the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRental {
    /// The rental's id.
    pub rental_id: Uuid,
    /// Who holds the copy.
    pub customer_id: Uuid,
    /// Since when.
    pub rented_at: DateTime<Utc>,
}

/// A movie's state, as rebuilt from its events (or a snapshot and the events after it).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Movie {
    /// The details; `None` before the movie is added.
    pub details: Option<MovieDetails>,
    /// Whether the movie is retired.
    pub retired: bool,
    /// The open rental, while the copy is out.
    pub rental: Option<OpenRental>,
    /// When the copy last came back: no later rental may start before it.
    pub last_returned_at: Option<DateTime<Utc>>,
    /// How many times the copy was rented.
    pub times_rented: u64,
}

impl Movie {
    /// Whether the copy can be rented now.
    pub fn available(&self) -> bool {
        self.details.is_some() && !self.retired && self.rental.is_none()
    }

    fn existing(&self) -> Result<&MovieDetails, MovieError> {
        self.details.as_ref().ok_or(MovieError::NotFound)
    }

    fn changed_fields(&self, changes: MovieChanges) -> Result<Option<MovieEvent>, MovieError> {
        let current = self.existing()?;
        fn keep_if_new<T: PartialEq>(new: Option<T>, old: &T) -> Option<T> {
            new.filter(|value| value != old)
        }
        let event = MovieEvent::MovieUpdated {
            title: keep_if_new(changes.title, &current.title),
            storyline: keep_if_new(changes.storyline, &current.storyline),
            release_date: keep_if_new(changes.release_date, &current.release_date),
            rating: keep_if_new(changes.rating, &current.rating),
            director: keep_if_new(changes.director, &current.director),
            category_ids: keep_if_new(changes.category_ids, &current.category_ids),
        };
        let nothing = MovieEvent::MovieUpdated {
            title: None,
            storyline: None,
            release_date: None,
            rating: None,
            director: None,
            category_ids: None,
        };
        Ok((event != nothing).then_some(event))
    }
}

impl Aggregate for Movie {
    const TYPE: &'static str = "movie";
    type Command = MovieCommand;
    type Event = MovieEvent;
    type Error = MovieError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            MovieCommand::AddMovie { details } => {
                if self.details.is_some() {
                    return Err(MovieError::AlreadyExists);
                }
                let MovieDetails { title, storyline, release_date, rating, director, category_ids } = details;
                let event =
                    MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids };
                sink.write(event, self).await;
            }
            MovieCommand::UpdateMovie { changes } => {
                self.existing()?;
                if self.retired {
                    return Err(MovieError::Retired);
                }
                // Fields given with their current value are no change: nothing is recorded for them.
                if let Some(event) = self.changed_fields(changes)? {
                    sink.write(event, self).await;
                }
            }
            MovieCommand::RetireMovie => {
                self.existing()?;
                if self.retired {
                    return Err(MovieError::Retired);
                }
                if self.rental.is_some() {
                    return Err(MovieError::NotAvailable);
                }
                sink.write(MovieEvent::MovieRetired {}, self).await;
            }
            MovieCommand::RentMovie { rental_id, customer_id, rented_at, now } => {
                self.existing()?;
                if !self.available() {
                    return Err(MovieError::NotAvailable);
                }
                if rented_at > now {
                    return Err(MovieError::RentedInFuture);
                }
                if self.last_returned_at.is_some_and(|returned| rented_at < returned) {
                    return Err(MovieError::RentedBeforePreviousReturn);
                }
                let event = MovieEvent::MovieRented { rental_id, customer_id, rented_at };
                sink.write(event, self).await;
            }
            MovieCommand::ReturnMovie { rental_id, by, returned_at, now } => {
                self.existing()?;
                let open = match &self.rental {
                    Some(open) if open.rental_id == rental_id => open,
                    _ => return Err(MovieError::NotActive),
                };
                if !by.may_act_for(open.customer_id) {
                    return Err(MovieError::NotTheRenter);
                }
                if returned_at > now {
                    return Err(MovieError::ReturnedInFuture);
                }
                if returned_at < open.rented_at {
                    return Err(MovieError::ReturnedBeforeRent);
                }
                let event =
                    MovieEvent::MovieReturned { rental_id, customer_id: open.customer_id, returned_at };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids } => {
                self.details =
                    Some(MovieDetails { title, storyline, release_date, rating, director, category_ids });
            }
            MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids } => {
                if let Some(details) = self.details.as_mut() {
                    if let Some(title) = title {
                        details.title = title;
                    }
                    if let Some(storyline) = storyline {
                        details.storyline = storyline;
                    }
                    if let Some(release_date) = release_date {
                        details.release_date = release_date;
                    }
                    if let Some(rating) = rating {
                        details.rating = rating;
                    }
                    if let Some(director) = director {
                        details.director = director;
                    }
                    if let Some(category_ids) = category_ids {
                        details.category_ids = category_ids;
                    }
                }
            }
            MovieEvent::MovieRetired {} => self.retired = true,
            MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                self.rental = Some(OpenRental { rental_id, customer_id, rented_at });
                self.times_rented += 1;
            }
            MovieEvent::MovieReturned { returned_at, .. } => {
                self.rental = None;
                self.last_returned_at = Some(returned_at);
            }
        }
    }
}
