use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::persist::SerializedEvent;
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::loan::LoanPolicy;
use crate::price::{Charge, PricePlan};
use crate::Actor;

type RentalTest = TestFramework<Rental>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// When every test rental starts.
fn rented_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 10, 0, 0).unwrap()
}

/// 80 hours after the rent: 4 started days, 350 cents under the default plan.
fn returned_at() -> DateTime<Utc> {
    rented_at() + Duration::hours(80)
}

fn paid_at() -> DateTime<Utc> {
    returned_at() + Duration::hours(1)
}

/// The ids of one rental's movie and customer.
struct Parties {
    movie: Uuid,
    customer: Uuid,
}

fn parties() -> Parties {
    Parties { movie: Uuid::now_v7(), customer: Uuid::now_v7() }
}

/// Seven days after the rent: when every test rental is due under the default loan.
fn due_at() -> DateTime<Utc> {
    rented_at() + Duration::days(7)
}

fn opened(p: &Parties) -> RentalEvent {
    RentalEvent::RentalOpened {
        movie_id: p.movie,
        customer_id: p.customer,
        rented_at: rented_at(),
        due_at: due_at(),
    }
}

fn open(p: &Parties) -> RentalCommand {
    RentalCommand::OpenRental {
        movie_id: p.movie,
        customer_id: p.customer,
        rented_at: rented_at(),
        loan: LoanPolicy::default(),
    }
}

fn mark_overdue(due_at: DateTime<Utc>) -> RentalCommand {
    RentalCommand::MarkOverdue { due_at, returned_at: None }
}

fn overdue() -> RentalEvent {
    RentalEvent::RentalOverdue { due_at: due_at() }
}

fn close(returned_at: DateTime<Utc>) -> RentalCommand {
    RentalCommand::CloseRental { returned_at, plan: PricePlan::default() }
}

fn closed(returned_at: DateTime<Utc>) -> RentalEvent {
    RentalEvent::RentalClosed { returned_at }
}

fn assessed(days: u32, amount_cents: i64) -> RentalEvent {
    RentalEvent::ChargeAssessed {
        days,
        amount_cents,
        currency: "EUR".to_string(),
        plan: PricePlan::default(),
    }
}

/// The events of a rental opened, returned after 80 hours and charged 350 cents.
fn charged(p: &Parties) -> Vec<RentalEvent> {
    vec![opened(p), closed(returned_at()), assessed(4, 350)]
}

fn pay(amount_cents: i64, by: Actor) -> RentalCommand {
    RentalCommand::PayRental { amount_cents, by, paid_at: paid_at() }
}

fn paid(amount_cents: i64) -> RentalEvent {
    RentalEvent::RentalPaid { amount_cents, currency: "EUR".to_string(), paid_at: paid_at() }
}

fn replay(events: impl IntoIterator<Item = RentalEvent>) -> Rental {
    let mut rental = Rental::default();
    for event in events {
        rental.apply(event);
    }
    rental
}

// ---------------------------------------------------------------------------------------------
// OpenRental
// ---------------------------------------------------------------------------------------------

#[test]
fn opening_a_new_rental_records_its_facts() {
    let p = parties();
    RentalTest::with(()).given_no_previous_events().when(open(&p)).then_expect_events(vec![opened(&p)]);
}

#[test]
fn opening_again_with_the_same_facts_records_nothing() {
    let p = parties();
    RentalTest::with(()).given(vec![opened(&p)]).when(open(&p)).then_expect_events(vec![]);
}

#[test]
fn opening_again_with_the_same_facts_after_the_close_records_nothing() {
    let p = parties();
    RentalTest::with(()).given(charged(&p)).when(open(&p)).then_expect_events(vec![]);
}

#[test]
fn opening_again_for_another_customer_is_refused() {
    let p = parties();
    let other = Parties { customer: Uuid::now_v7(), ..p };
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(open(&other))
        .then_expect_error(RentalError::OpenedDifferently);
}

#[test]
fn opening_again_for_another_movie_is_refused() {
    let p = parties();
    let other = Parties { movie: Uuid::now_v7(), ..p };
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(open(&other))
        .then_expect_error(RentalError::OpenedDifferently);
}

#[test]
fn opening_again_at_another_time_is_refused() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(RentalCommand::OpenRental {
            movie_id: p.movie,
            customer_id: p.customer,
            rented_at: rented_at() + Duration::milliseconds(1),
            loan: LoanPolicy::default(),
        })
        .then_expect_error(RentalError::OpenedDifferently);
}

// ---------------------------------------------------------------------------------------------
// CloseRental
// ---------------------------------------------------------------------------------------------

#[test]
fn closing_a_rental_that_is_not_opened_is_refused() {
    RentalTest::with(())
        .given_no_previous_events()
        .when(close(returned_at()))
        .then_expect_error(RentalError::NotOpened);
}

#[test]
fn closing_an_open_rental_records_the_return_and_assesses_its_charge() {
    // 80 hours are 4 started days: 3 × 100 + 1 × 50 cents.
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(close(returned_at()))
        .then_expect_events(vec![closed(returned_at()), assessed(4, 350)]);
}

#[test]
fn closing_charges_the_amounts_of_the_price_table() {
    let table = [
        (Duration::zero(), 1, 100),
        (Duration::hours(24), 1, 100),
        (Duration::hours(24) + Duration::seconds(1), 2, 200),
        (Duration::hours(72), 3, 300),
        (Duration::hours(80), 4, 350),
        (Duration::days(10), 10, 650),
        (Duration::days(30), 30, 1650),
    ];
    for (elapsed, days, cents) in table {
        let p = parties();
        let back = rented_at() + elapsed;
        RentalTest::with(())
            .given(vec![opened(&p)])
            .when(close(back))
            .then_expect_events(vec![closed(back), assessed(days, cents)]);
    }
}

#[test]
fn closing_at_the_moment_of_the_rent_charges_one_day() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(close(rented_at()))
        .then_expect_events(vec![closed(rented_at()), assessed(1, 100)]);
}

#[test]
fn closing_records_the_plan_that_priced_the_charge() {
    let p = parties();
    let plan = PricePlan {
        name: "summer".to_string(),
        first_days: 1,
        first_days_cents: 200,
        later_days_cents: 10,
        currency: "CHF".to_string(),
    };
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(RentalCommand::CloseRental { returned_at: returned_at(), plan: plan.clone() })
        .then_expect_events(vec![
            closed(returned_at()),
            RentalEvent::ChargeAssessed { days: 4, amount_cents: 230, currency: "CHF".to_string(), plan },
        ]);
}

#[test]
fn closing_again_at_the_same_time_records_nothing() {
    let p = parties();
    RentalTest::with(()).given(charged(&p)).when(close(returned_at())).then_expect_events(vec![]);
}

#[test]
fn closing_a_paid_rental_again_at_the_same_time_records_nothing() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .and(vec![paid(350)])
        .when(close(returned_at()))
        .then_expect_events(vec![]);
}

#[test]
fn closing_again_at_another_time_is_refused() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .when(close(returned_at() + Duration::hours(1)))
        .then_expect_error(RentalError::ClosedDifferently);
}

#[test]
fn closing_before_the_rent_is_refused() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(close(rented_at() - Duration::milliseconds(1)))
        .then_expect_error(RentalError::ReturnedBeforeRent);
}

// ---------------------------------------------------------------------------------------------
// PayRental
// ---------------------------------------------------------------------------------------------

#[test]
fn paying_a_rental_that_is_not_opened_is_refused() {
    RentalTest::with(())
        .given_no_previous_events()
        .when(pay(350, Actor::customer(Uuid::now_v7())))
        .then_expect_error(RentalError::NotOpened);
}

#[test]
fn paying_an_active_rental_is_refused_as_not_returned() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(pay(350, Actor::customer(p.customer)))
        .then_expect_error(RentalError::NotReturned);
}

#[test]
fn the_renter_paying_the_exact_charge_records_the_payment() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .when(pay(350, Actor::customer(p.customer)))
        .then_expect_events(vec![paid(350)]);
}

#[test]
fn an_admin_paying_for_the_customer_records_the_payment() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .when(pay(350, Actor::admin(Uuid::now_v7())))
        .then_expect_events(vec![paid(350)]);
}

#[test]
fn another_customer_paying_is_refused() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .when(pay(350, Actor::customer(Uuid::now_v7())))
        .then_expect_error(RentalError::NotTheRenter);
}

#[test]
fn paying_another_amount_than_the_charge_is_refused_naming_the_charge() {
    let p = parties();
    for wrong in [0, 349, 351, -350] {
        RentalTest::with(())
            .given(charged(&p))
            .when(pay(wrong, Actor::customer(p.customer)))
            .then_expect_error(RentalError::WrongAmount { expected_cents: 350 });
    }
}

#[test]
fn paying_a_paid_rental_is_refused() {
    let p = parties();
    RentalTest::with(())
        .given(charged(&p))
        .and(vec![paid(350)])
        .when(pay(350, Actor::customer(p.customer)))
        .then_expect_error(RentalError::AlreadyPaid);
}

// ---------------------------------------------------------------------------------------------
// Due dates: OpenRental fixes due_at, MarkOverdue records RentalOverdue once
// ---------------------------------------------------------------------------------------------

#[test]
fn opening_fixes_the_due_time_from_the_loan_policy() {
    let p = parties();
    let loan = LoanPolicy::days(3).unwrap();
    RentalTest::with(())
        .given_no_previous_events()
        .when(RentalCommand::OpenRental {
            movie_id: p.movie,
            customer_id: p.customer,
            rented_at: rented_at(),
            loan,
        })
        .then_expect_events(vec![RentalEvent::RentalOpened {
            movie_id: p.movie,
            customer_id: p.customer,
            rented_at: rented_at(),
            due_at: Utc.with_ymd_and_hms(2026, 3, 5, 10, 0, 0).unwrap(),
        }]);
}

#[test]
fn opening_again_under_another_loan_policy_records_nothing() {
    // The due time was fixed when the rental opened; a redelivered OpenRental from a process
    // configured otherwise does not move it.
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(RentalCommand::OpenRental {
            movie_id: p.movie,
            customer_id: p.customer,
            rented_at: rented_at(),
            loan: LoanPolicy::days(30).unwrap(),
        })
        .then_expect_events(vec![]);
}

#[test]
fn an_active_rental_at_its_due_time_becomes_overdue() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(mark_overdue(due_at()))
        .then_expect_events(vec![overdue()]);
}

#[test]
fn an_overdue_rental_is_not_marked_overdue_twice() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p), overdue()])
        .when(mark_overdue(due_at()))
        .then_expect_events(vec![]);
}

#[test]
fn a_rental_returned_before_its_due_time_never_becomes_overdue() {
    let p = parties();
    RentalTest::with(()).given(charged(&p)).when(mark_overdue(due_at())).then_expect_events(vec![]);
}

#[test]
fn a_timer_for_a_copy_the_movie_has_taken_back_is_a_no_op() {
    // The movie's stream recorded the return; the rental's own stream has not heard of it yet.
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(RentalCommand::MarkOverdue {
            due_at: due_at(),
            returned_at: Some(due_at() + Duration::hours(1)),
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_timer_for_another_due_time_is_a_no_op() {
    let p = parties();
    RentalTest::with(())
        .given(vec![opened(&p)])
        .when(mark_overdue(due_at() - Duration::days(1)))
        .then_expect_events(vec![]);
}

#[test]
fn marking_a_rental_that_is_not_opened_overdue_is_refused() {
    RentalTest::with(())
        .given_no_previous_events()
        .when(mark_overdue(due_at()))
        .then_expect_error(RentalError::NotOpened);
}

#[test]
fn an_overdue_rental_returned_after_its_due_time_is_charged_as_usual() {
    // Back ten days after the rent: 10 days, 650 cents.
    let p = parties();
    let back = rented_at() + Duration::days(10);
    RentalTest::with(())
        .given(vec![opened(&p), overdue()])
        .when(close(back))
        .then_expect_events(vec![closed(back), assessed(10, 650)]);
}

#[test]
fn a_late_timer_after_a_late_return_is_a_no_op() {
    // Returned after the due time, but before any process fired the timer.
    let p = parties();
    let back = rented_at() + Duration::days(10);
    RentalTest::with(())
        .given(vec![opened(&p), closed(back), assessed(10, 650)])
        .when(mark_overdue(due_at()))
        .then_expect_events(vec![]);
}

#[test]
fn the_state_records_the_due_time_and_the_overdue_time() {
    let p = parties();
    let rental = replay([opened(&p)]);
    assert_eq!((rental.due_at, rental.overdue_at), (Some(due_at()), None));
    let rental = replay([opened(&p), overdue(), closed(rented_at() + Duration::days(9))]);
    assert_eq!((rental.due_at, rental.overdue_at), (Some(due_at()), Some(due_at())));
    assert_eq!(rental.status(), Some(RentalStatus::Returned), "overdue is not a status of its own");
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[test]
fn the_status_runs_from_active_to_returned_to_charged_to_paid() {
    let p = parties();
    let mut rental = Rental::default();
    assert_eq!(rental.status(), None, "a rental not yet opened has no status");

    rental.apply(opened(&p));
    assert_eq!(rental.status(), Some(RentalStatus::Active));

    rental.apply(closed(returned_at()));
    assert_eq!(rental.status(), Some(RentalStatus::Returned));

    rental.apply(assessed(4, 350));
    assert_eq!(rental.status(), Some(RentalStatus::Charged));
    assert_eq!(rental.charge, Some(Charge { days: 4, amount_cents: 350, currency: "EUR".to_string() }));

    rental.apply(paid(350));
    assert_eq!(rental.status(), Some(RentalStatus::Paid));
    assert_eq!(rental.paid_at, Some(paid_at()));
}

#[test]
fn the_status_serialises_in_snake_case() {
    let statuses = [
        (RentalStatus::Active, "\"active\""),
        (RentalStatus::Returned, "\"returned\""),
        (RentalStatus::Charged, "\"charged\""),
        (RentalStatus::Paid, "\"paid\""),
    ];
    for (status, json) in statuses {
        assert_eq!(serde_json::to_string(&status).unwrap(), json);
    }
}

#[test]
fn the_rental_state_round_trips_through_json() {
    let p = parties();
    let rental = replay(charged(&p).into_iter().chain([paid(350)]));
    let json = serde_json::to_string(&rental).unwrap();
    let back: Rental = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rental);
}

// ---------------------------------------------------------------------------------------------
// Serialisation of events
// ---------------------------------------------------------------------------------------------

#[test]
fn every_rental_event_round_trips_through_json() {
    let p = parties();
    let events = vec![
        RentalEvent::RentalOpened {
            movie_id: p.movie,
            customer_id: p.customer,
            rented_at: rented_at() + Duration::milliseconds(123),
            due_at: due_at() + Duration::milliseconds(123),
        },
        overdue(),
        closed(returned_at()),
        assessed(4, 350),
        paid(350),
    ];
    for event in &events {
        let json = serde_json::to_string(event).unwrap();
        let back: RentalEvent =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
        assert_eq!(&back, event);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// About 10 years, in milliseconds.
const TEN_YEARS_MILLIS: i64 = 10 * 366 * 24 * 60 * 60 * 1000;

proptest! {
    #[test]
    fn closing_charges_what_the_plan_assesses_and_replays_to_charged(
        // Any millisecond from 1970 to 2100, and any non-negative rental duration up to ~10 years.
        rented_millis in 0i64..4_102_444_800_000,
        elapsed_millis in 0i64..=TEN_YEARS_MILLIS,
    ) {
        // Arrange
        let rented_at = DateTime::from_timestamp_millis(rented_millis).unwrap();
        let returned_at = rented_at + Duration::milliseconds(elapsed_millis);
        let opened = RentalEvent::RentalOpened {
            movie_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            rented_at,
            due_at: LoanPolicy::default().due_at(rented_at),
        };

        // Act
        let emitted = RentalTest::with(())
            .given(vec![opened.clone()])
            .when(close(returned_at))
            .inspect_result()
            .expect("closing an open rental at or after its rent succeeds");

        // Assert
        let expected = PricePlan::default().assess(rented_at, returned_at);
        prop_assert!(expected.days >= 1);
        prop_assert_eq!(emitted.len(), 2);
        prop_assert_eq!(&emitted[0], &RentalEvent::RentalClosed { returned_at });
        match &emitted[1] {
            RentalEvent::ChargeAssessed { days, amount_cents, currency, plan } => {
                prop_assert_eq!(
                    Charge { days: *days, amount_cents: *amount_cents, currency: currency.clone() },
                    expected
                );
                prop_assert!(*days >= 1);
                prop_assert_eq!(plan, &PricePlan::default());
            }
            other => prop_assert!(false, "expected ChargeAssessed, got {:?}", other),
        }

        let rental = replay(std::iter::once(opened).chain(emitted));
        prop_assert_eq!(rental.status(), Some(RentalStatus::Charged));
        prop_assert_eq!(rental.returned_at, Some(returned_at));
    }
}

// ---------------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------------

fn upcast(event_type: &str, event_version: &str, payload: serde_json::Value) -> SerializedEvent {
    let mut event = SerializedEvent::new(
        "rental-1".to_string(),
        4,
        "rental".to_string(),
        event_type.to_string(),
        event_version.to_string(),
        payload,
        serde_json::Value::Null,
    );
    for upcaster in super::upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event
}

#[test]
fn a_rental_paid_of_version_1_gains_the_euro_currency_and_becomes_version_2() {
    let stored = serde_json::json!({ "amount_cents": 350, "paid_at": "2026-01-05T10:00:00Z" });
    let event = upcast("RentalPaid", "1.0", stored);
    assert_eq!(event.event_version, "2.0.0", "version {RENTAL_PAID_VERSION} in semantic form");
    assert_eq!(
        event.payload,
        serde_json::json!({ "amount_cents": 350, "currency": "EUR", "paid_at": "2026-01-05T10:00:00Z" })
    );
}

#[test]
fn current_payloads_and_other_event_types_are_left_as_they_are() {
    let current =
        serde_json::json!({ "amount_cents": 350, "currency": "USD", "paid_at": "2026-01-05T10:00:00Z" });
    let event = upcast("RentalPaid", RENTAL_PAID_VERSION, current.clone());
    assert_eq!(event.payload, current);
    let closed = serde_json::json!({ "returned_at": "2026-01-05T10:00:00Z" });
    let event = upcast("RentalClosed", "1.0", closed.clone());
    assert_eq!((event.event_version.as_str(), event.payload), ("1.0", closed));
}

#[test]
fn a_payment_records_the_currency_of_its_charge_as_version_2() {
    let p = parties();
    let mut events = charged(&p);
    if let Some(RentalEvent::ChargeAssessed { currency, .. }) = events.last_mut() {
        *currency = "CHF".to_string();
    }
    let paid = RentalEvent::RentalPaid { amount_cents: 350, currency: "CHF".to_string(), paid_at: paid_at() };
    assert_eq!(paid.event_version(), "2.0");
    RentalTest::with(())
        .given(events)
        .when(pay(350, Actor::customer(p.customer)))
        .then_expect_events(vec![paid]);
}

#[test]
fn a_rental_opened_of_version_1_is_due_seven_days_after_its_rent_and_becomes_version_2() {
    let (movie, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let stored = serde_json::json!({
        "movie_id": movie, "customer_id": customer, "rented_at": "2026-01-05T10:00:00.250Z"
    });
    let event = upcast("RentalOpened", "1.0", stored);
    assert_eq!(event.event_version, "2.0.0", "version {RENTAL_OPENED_VERSION} in semantic form");
    let decoded: RentalEvent =
        serde_json::from_value(serde_json::json!({ "RentalOpened": event.payload })).unwrap();
    assert_eq!(
        decoded,
        RentalEvent::RentalOpened {
            movie_id: movie,
            customer_id: customer,
            rented_at: Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + Duration::milliseconds(250),
            due_at: Utc.with_ymd_and_hms(2026, 1, 12, 10, 0, 0).unwrap() + Duration::milliseconds(250),
        }
    );
}

#[test]
fn a_rental_opened_of_version_2_keeps_its_own_due_time() {
    let current = serde_json::json!({
        "movie_id": Uuid::now_v7(), "customer_id": Uuid::now_v7(),
        "rented_at": "2026-01-05T10:00:00Z", "due_at": "2026-01-08T10:00:00Z"
    });
    let event = upcast("RentalOpened", RENTAL_OPENED_VERSION, current.clone());
    assert_eq!(event.payload, current);
    let p = parties();
    assert_eq!(opened(&p).event_version(), "2.0");
    assert_eq!(overdue().event_version(), "1.0");
    assert_eq!(overdue().event_type(), "RentalOverdue");
}

#[test]
fn a_rental_opened_of_version_1_without_a_readable_rent_time_gains_no_due_time() {
    let stored =
        serde_json::json!({ "movie_id": Uuid::now_v7(), "customer_id": Uuid::now_v7(), "rented_at": 5 });
    let event = upcast("RentalOpened", "1.0", stored.clone());
    assert_eq!(event.payload, stored, "left as it was, so decoding names the broken field");
}
