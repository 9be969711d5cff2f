//! The price plan: what a rental costs, from its own rent and return times.
//!
//! `days` is the number of started 24-hour periods between rent and return, at least 1. The
//! default plan charges 100 cents a day for the first 3 days and 50 cents a day after that.
//! The plan travels inside the `ChargeAssessed` event, so a charge can always be explained even
//! after the configured plan changes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

const DAY_MILLIS: i64 = 24 * 60 * 60 * 1000;

/// A price plan: a first tier of days at one daily rate, then another daily rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePlan {
    /// A stable name for the plan, recorded with every charge.
    pub name: String,
    /// How many days are charged at `first_days_cents`.
    pub first_days: u32,
    /// The daily rate of the first days, in cents.
    pub first_days_cents: i64,
    /// The daily rate of every later day, in cents.
    pub later_days_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

impl Default for PricePlan {
    fn default() -> Self {
        Self {
            name: "standard".to_string(),
            first_days: 3,
            first_days_cents: 100,
            later_days_cents: 50,
            currency: "EUR".to_string(),
        }
    }
}

/// The charge for one rental.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Days charged.
    pub days: u32,
    /// Amount in cents.
    pub amount_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// Started 24-hour periods from `rented_at` to `returned_at`, at least 1.
pub fn rental_days(rented_at: DateTime<Utc>, returned_at: DateTime<Utc>) -> u32 {
    let millis = (returned_at - rented_at).num_milliseconds().max(0);
    let started = (millis + DAY_MILLIS - 1) / DAY_MILLIS;
    u32::try_from(started.max(1)).unwrap_or(u32::MAX)
}

impl PricePlan {
    /// The amount for a number of days.
    pub fn amount_cents(&self, days: u32) -> i64 {
        let first = i64::from(days.min(self.first_days));
        let later = i64::from(days.saturating_sub(self.first_days));
        first * self.first_days_cents + later * self.later_days_cents
    }

    /// The charge of a rental from its own times.
    pub fn assess(&self, rented_at: DateTime<Utc>, returned_at: DateTime<Utc>) -> Charge {
        let days = rental_days(rented_at, returned_at);
        Charge { days, amount_cents: self.amount_cents(days), currency: self.currency.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_default_plan_matches_the_published_table() {
        let plan = PricePlan::default();
        for (days, cents) in [(1, 100), (2, 200), (3, 300), (4, 350), (5, 400), (10, 650), (30, 1650)] {
            assert_eq!(plan.amount_cents(days), cents, "{days} days");
        }
    }

    #[test]
    fn days_are_started_periods_of_24_hours_at_least_one() {
        let cases = [
            (Duration::zero(), 1),
            (Duration::minutes(1), 1),
            (Duration::hours(24), 1),
            (Duration::hours(24) + Duration::milliseconds(1), 2),
            (Duration::hours(72) - Duration::minutes(1), 3),
            (Duration::hours(73), 4),
            (Duration::days(30), 30),
        ];
        for (elapsed, days) in cases {
            assert_eq!(rental_days(t0(), t0() + elapsed), days, "{elapsed}");
        }
    }

    #[test]
    fn assess_reports_days_amount_and_currency() {
        let charge = PricePlan::default().assess(t0(), t0() + Duration::hours(80));
        assert_eq!(charge, Charge { days: 4, amount_cents: 350, currency: "EUR".into() });
    }

    proptest! {
        #[test]
        fn the_price_never_falls_as_days_grow(days in 1u32..10_000) {
            let plan = PricePlan::default();
            prop_assert!(plan.amount_cents(days + 1) > plan.amount_cents(days));
        }

        #[test]
        fn later_days_cost_the_later_rate(days in 3u32..10_000) {
            let plan = PricePlan::default();
            prop_assert_eq!(plan.amount_cents(days + 1) - plan.amount_cents(days), 50);
        }

        #[test]
        fn a_longer_rental_never_costs_less(a in 0i64..10_000_000_000, b in 0i64..10_000_000_000) {
            let plan = PricePlan::default();
            let (short, long) = (a.min(b), a.max(b));
            let short = plan.assess(t0(), t0() + Duration::milliseconds(short));
            let long = plan.assess(t0(), t0() + Duration::milliseconds(long));
            prop_assert!(long.days >= short.days);
            prop_assert!(long.amount_cents >= short.amount_cents);
            prop_assert!(short.days >= 1);
        }
    }
}
