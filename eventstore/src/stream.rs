//! What the store needs to know about each kind of stream, beyond cqrs-es's `Aggregate`: when to
//! snapshot, and which lookup rows its events write in the append transaction.

use std::future::Future;

use cqrs_es::Aggregate;
use domain::category::{Category, CategoryCommand, CategoryEvent};
use domain::movie::{Movie, MovieCommand, MovieEvent};
use domain::rental::{Rental, RentalCommand, RentalEvent};
use sqlx::PgConnection;
use uuid::Uuid;

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

    /// Writes the synchronous lookup rows for the events being appended, inside the append
    /// transaction, so that a lookup never disagrees with the log: every stream of the unit at
    /// once (each with its new events, in order), a statement per kind of row rather than per event.
    fn write_lookups<'a>(
        _conn: &'a mut PgConnection,
        _streams: &'a [(&'a str, &'a [Self::Event])],
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
        streams: &[(&str, &[MovieEvent])],
    ) -> Result<(), sqlx::Error> {
        let mut rentals = lookup::NewRentals::default();
        let mut returns = lookup::Returns::default();
        // A movie's categories are those of its last event that sets them.
        let mut categories: Vec<(Uuid, &[Uuid])> = Vec::new();
        for (aggregate_id, events) in streams {
            let movie_id = lookup::parse_stream_id(aggregate_id)?;
            for event in *events {
                match event {
                    MovieEvent::MovieRented { rental_id, customer_id, rented_at } => {
                        rentals.push(*rental_id, movie_id, *customer_id, *rented_at);
                    }
                    MovieEvent::MovieReturned { rental_id, returned_at, .. } => {
                        returns.push(*rental_id, *returned_at);
                    }
                    MovieEvent::MovieAdded { category_ids, .. }
                    | MovieEvent::MovieUpdated { category_ids: Some(category_ids), .. } => {
                        categories.retain(|(id, _)| *id != movie_id);
                        categories.push((movie_id, category_ids.ids()));
                    }
                    MovieEvent::MovieRetired {} => {
                        categories.retain(|(id, _)| *id != movie_id);
                        categories.push((movie_id, &[]));
                    }
                    MovieEvent::MovieUpdated { .. } => {}
                }
            }
        }
        // A rental's lookup row exists before its return marks it (both can be in one unit).
        rentals.insert(&mut *conn).await?;
        returns.mark(&mut *conn).await?;
        lookup::set_movie_categories(conn, &categories).await
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
        streams: &[(&str, &[CategoryEvent])],
    ) -> Result<(), sqlx::Error> {
        for (aggregate_id, events) in streams {
            let category_id = lookup::parse_stream_id(aggregate_id)?;
            for event in *events {
                let (CategoryEvent::CategoryCreated { name } | CategoryEvent::CategoryRenamed { name }) =
                    event;
                lookup::upsert_category(conn, category_id, name.as_str()).await?;
            }
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
        streams: &[(&str, &[RentalEvent])],
    ) -> Result<(), sqlx::Error> {
        let mut due = deadline::Timers::default();
        let mut fired: Vec<&str> = Vec::new();
        let mut closed: Vec<&str> = Vec::new();
        for (aggregate_id, events) in streams {
            for event in *events {
                match event {
                    RentalEvent::RentalOpened { due_at, .. } => due.push(aggregate_id, *due_at),
                    RentalEvent::RentalOverdue { .. } => fired.push(aggregate_id),
                    RentalEvent::RentalClosed { .. } => closed.push(aggregate_id),
                    RentalEvent::ChargeAssessed { .. } | RentalEvent::RentalPaid { .. } => {}
                }
            }
        }
        // A stream's events come in its life's order (opened, overdue, closed), and so do these.
        due.set(&mut *conn, deadline::OVERDUE).await?;
        deadline::fired(&mut *conn, &fired, deadline::OVERDUE).await?;
        deadline::cancel(conn, &closed, &[deadline::OVERDUE, deadline::REMINDER]).await
    }
}
