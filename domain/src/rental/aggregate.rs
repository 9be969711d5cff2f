use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{RentalCommand, RentalError, RentalEvent};
use crate::price::Charge;

/// Where a rental is in its life: `active → returned → charged → paid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RentalStatus {
    /// The copy is out.
    Active,
    /// The copy is back; the charge is not assessed yet.
    Returned,
    /// The charge is assessed and unpaid.
    Charged,
    /// The charge is paid.
    Paid,
}

/// A rental's state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rental {
    /// The movie; `None` before the rental is opened.
    pub movie_id: Option<Uuid>,
    /// The customer.
    pub customer_id: Option<Uuid>,
    /// When it started.
    pub rented_at: Option<DateTime<Utc>>,
    /// When it is due back.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// The due time it passed while the copy was out, once it did.
    #[serde(default)]
    pub overdue_at: Option<DateTime<Utc>>,
    /// When the copy came back.
    pub returned_at: Option<DateTime<Utc>>,
    /// The assessed charge.
    pub charge: Option<Charge>,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
}

impl Rental {
    /// The status, or `None` before the rental is opened.
    pub fn status(&self) -> Option<RentalStatus> {
        self.movie_id?;
        Some(if self.paid_at.is_some() {
            RentalStatus::Paid
        } else if self.charge.is_some() {
            RentalStatus::Charged
        } else if self.returned_at.is_some() {
            RentalStatus::Returned
        } else {
            RentalStatus::Active
        })
    }
}

impl Aggregate for Rental {
    const TYPE: &'static str = "rental";
    type Command = RentalCommand;
    type Event = RentalEvent;
    type Error = RentalError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            RentalCommand::OpenRental { movie_id, customer_id, rented_at, loan } => {
                if self.movie_id.is_some() {
                    // The due time was fixed when the rental opened: a redelivered command under
                    // another policy changes nothing.
                    let same = self.movie_id == Some(movie_id)
                        && self.customer_id == Some(customer_id)
                        && self.rented_at == Some(rented_at);
                    return if same { Ok(()) } else { Err(RentalError::OpenedDifferently) };
                }
                let due_at = loan.due_at(rented_at);
                let event = RentalEvent::RentalOpened { movie_id, customer_id, rented_at, due_at };
                sink.write(event, self).await;
            }
            RentalCommand::MarkOverdue { due_at, returned_at } => {
                let own_due_at = self.due_at.ok_or(RentalError::NotOpened)?;
                // A timer that fires late (the copy is back), again (already overdue) or for
                // another due time is a no-op.
                let back = self.returned_at.is_some() || returned_at.is_some();
                if back || self.overdue_at.is_some() || due_at != own_due_at {
                    return Ok(());
                }
                sink.write(RentalEvent::RentalOverdue { due_at: own_due_at }, self).await;
            }
            RentalCommand::CloseRental { returned_at, plan } => {
                let rented_at = self.rented_at.ok_or(RentalError::NotOpened)?;
                if let Some(closed_at) = self.returned_at {
                    return if closed_at == returned_at {
                        Ok(())
                    } else {
                        Err(RentalError::ClosedDifferently)
                    };
                }
                if returned_at < rented_at {
                    return Err(RentalError::ReturnedBeforeRent);
                }
                let charge = plan.assess(rented_at, returned_at);
                sink.write(RentalEvent::RentalClosed { returned_at }, self).await;
                let event = RentalEvent::ChargeAssessed {
                    days: charge.days,
                    amount_cents: charge.amount_cents,
                    currency: charge.currency,
                    plan,
                };
                sink.write(event, self).await;
            }
            RentalCommand::PayRental { amount_cents, by, paid_at } => {
                let customer_id = self.customer_id.ok_or(RentalError::NotOpened)?;
                if !by.may_act_for(customer_id) {
                    return Err(RentalError::NotTheRenter);
                }
                if self.paid_at.is_some() {
                    return Err(RentalError::AlreadyPaid);
                }
                let charge = self.charge.as_ref().ok_or(RentalError::NotReturned)?;
                if amount_cents != charge.amount_cents {
                    return Err(RentalError::WrongAmount { expected_cents: charge.amount_cents });
                }
                let currency = charge.currency.clone();
                sink.write(RentalEvent::RentalPaid { amount_cents, currency, paid_at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            RentalEvent::RentalOpened { movie_id, customer_id, rented_at, due_at } => {
                self.movie_id = Some(movie_id);
                self.customer_id = Some(customer_id);
                self.rented_at = Some(rented_at);
                self.due_at = Some(due_at);
            }
            RentalEvent::RentalOverdue { due_at } => self.overdue_at = Some(due_at),
            RentalEvent::RentalClosed { returned_at } => self.returned_at = Some(returned_at),
            RentalEvent::ChargeAssessed { days, amount_cents, currency, .. } => {
                self.charge = Some(Charge { days, amount_cents, currency });
            }
            RentalEvent::RentalPaid { paid_at, .. } => self.paid_at = Some(paid_at),
        }
    }
}
