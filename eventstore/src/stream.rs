//! What the store needs to know about each kind of stream, beyond cqrs-es's `Aggregate`: when to
//! snapshot, and which lookup rows its events write in the append transaction.

use std::future::Future;

use cqrs_es::Aggregate;
use domain::category::{Category, CategoryCommand, CategoryEvent};
use domain::movie::{Movie, MovieCommand, MovieEvent};
use domain::rental::{Rental, RentalCommand, RentalEvent};
use sqlx::PgConnection;

use crate::{deadline, lookup};

/// An aggregate as stored here.
pub trait StreamKind: Aggregate<Services = ()> + Clone + 'static
where
    Self::Command: Clone + Send + Sync,
{
    /// Write a snapshot whenever the stream's version crosses a multiple of this (`None`: never).
    const SNAPSHOT_EVERY: Option<i64> = None;

    /// The command's name, a label of the command metrics (a bounded set: the variant).
    fn command_name(command: &Self::Command) -> &'static str;

    /// Writes the synchronous lookup rows for events being appended, inside the append
    /// transaction, so that a lookup never disagrees with the log.
    fn write_lookups<'a>(
        _conn: &'a mut PgConnection,
        _aggregate_id: &'a str,
        _events: &'a [Self::Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a {
        async { Ok(()) }
    }
}

/// An aggregate's state and the version (last sequence) it reflects; version 0 is "no events".
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The last sequence applied.
    pub version: i64,
}

impl StreamKind for Movie {
    const SNAPSHOT_EVERY: Option<i64> = Some(20);

    fn command_name(command: &MovieCommand) -> &'static str {
        match command {
            MovieCommand::AddMovie { .. } => "AddMovie",
            MovieCommand::UpdateMovie { .. } => "UpdateMovie",
            MovieCommand::RetireMovie => "RetireMovie",
            MovieCommand::RentMovie { .. } => "RentMovie",
            MovieCommand::ReturnMovie { .. } => "ReturnMovie",
        }
    }

    async fn write_lookups(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[MovieEvent],
    ) -> Result<(), sqlx::Error> {
        let movie_id = lookup::parse_stream_id(aggregate_id)?;
        for event in events {
            match event {
                MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                    lookup::insert_rental(conn, *rental_id, movie_id, *customer_id, *rented_at).await?;
                }
                MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
                    lookup::mark_rental_returned(conn, *rental_id, *returned_at).await?;
                }
                MovieEvent::MovieAdded { category_ids, .. }
                | MovieEvent::MovieUpdated { category_ids: Some(category_ids), .. } => {
                    lookup::set_movie_categories(conn, movie_id, category_ids.ids()).await?;
                }
                MovieEvent::MovieRetired {} => {
                    lookup::set_movie_categories(conn, movie_id, &[]).await?;
                }
                MovieEvent::MovieUpdated { .. } => {}
            }
        }
        Ok(())
    }
}

impl StreamKind for Category {
    fn command_name(command: &CategoryCommand) -> &'static str {
        match command {
            CategoryCommand::CreateCategory { .. } => "CreateCategory",
            CategoryCommand::RenameCategory { .. } => "RenameCategory",
        }
    }

    async fn write_lookups(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[CategoryEvent],
    ) -> Result<(), sqlx::Error> {
        let category_id = lookup::parse_stream_id(aggregate_id)?;
        for event in events {
            let (CategoryEvent::CategoryCreated { name } | CategoryEvent::CategoryRenamed { name }) = event;
            lookup::upsert_category(conn, category_id, name.as_str()).await?;
        }
        Ok(())
    }
}

impl StreamKind for Rental {
    fn command_name(command: &RentalCommand) -> &'static str {
        match command {
            RentalCommand::OpenRental { .. } => "OpenRental",
            RentalCommand::CloseRental { .. } => "CloseRental",
            RentalCommand::PayRental { .. } => "PayRental",
            RentalCommand::MarkOverdue { .. } => "MarkOverdue",
        }
    }

    /// A rental's `overdue` timer is set with the event that fixes its due time and cancelled
    /// with the return, or with the `RentalOverdue` it fired; the return cancels its overdue
    /// reminders' timer too.
    async fn write_lookups(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[RentalEvent],
    ) -> Result<(), sqlx::Error> {
        for event in events {
            match event {
                RentalEvent::RentalOpened { due_at, .. } => {
                    deadline::set(conn, aggregate_id, deadline::OVERDUE, *due_at).await?;
                }
                RentalEvent::RentalClosed { .. } => {
                    deadline::cancel(conn, aggregate_id, &[deadline::OVERDUE, deadline::REMINDER]).await?;
                }
                RentalEvent::RentalOverdue { .. } => {
                    deadline::fired(conn, aggregate_id, deadline::OVERDUE).await?;
                }
                RentalEvent::ChargeAssessed { .. } | RentalEvent::RentalPaid { .. } => {}
            }
        }
        Ok(())
    }
}
