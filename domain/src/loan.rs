//! The loan policy: how long a customer may keep a copy. A rental is due this many days after it
//! starts; the due time is computed once, inside the `Rental` aggregate, and recorded in
//! `RentalOpened`, so changing the policy affects only later rentals.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The days of the default loan, and the loan every `RentalOpened` 1.0 was given (that version
/// was written while the loan was fixed at 7 days).
pub const DEFAULT_LOAN_DAYS: u32 = 7;

/// The longest loan a policy may grant.
pub const MAX_LOAN_DAYS: u32 = 365;

/// How many days a rental may last before it is overdue (1..=365).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoanPolicy {
    days: u32,
}

/// A loan length outside 1..=365 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a loan lasts 1 to {MAX_LOAN_DAYS} days, not {0}")]
pub struct LoanDaysOutOfRange(pub i64);

impl LoanPolicy {
    /// A policy of `days` days, which must lie in 1..=365.
    pub fn days(days: i64) -> Result<Self, LoanDaysOutOfRange> {
        match u32::try_from(days) {
            Ok(days @ 1..=MAX_LOAN_DAYS) => Ok(Self { days }),
            _ => Err(LoanDaysOutOfRange(days)),
        }
    }

    /// The policy's length in days.
    pub fn length_days(&self) -> u32 {
        self.days
    }

    /// When a rental that starts at `rented_at` is due.
    pub fn due_at(&self, rented_at: DateTime<Utc>) -> DateTime<Utc> {
        rented_at.checked_add_signed(Duration::days(i64::from(self.days))).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl Default for LoanPolicy {
    fn default() -> Self {
        Self { days: DEFAULT_LOAN_DAYS }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_policy_lasts_one_to_365_days() {
        assert_eq!(LoanPolicy::days(1).unwrap().length_days(), 1);
        assert_eq!(LoanPolicy::days(365).unwrap().length_days(), 365);
        for wrong in [0, -1, 366, i64::from(u32::MAX) + 1] {
            assert_eq!(LoanPolicy::days(wrong), Err(LoanDaysOutOfRange(wrong)));
        }
        assert_eq!(LoanPolicy::default().length_days(), 7);
    }

    #[test]
    fn a_rental_is_due_whole_days_after_it_starts() {
        let rented_at = Utc.with_ymd_and_hms(2026, 3, 28, 23, 30, 0).unwrap();
        let due = LoanPolicy::days(7).unwrap().due_at(rented_at);
        assert_eq!(due, Utc.with_ymd_and_hms(2026, 4, 4, 23, 30, 0).unwrap());
        assert_eq!(LoanPolicy::days(1).unwrap().due_at(DateTime::<Utc>::MAX_UTC), DateTime::<Utc>::MAX_UTC);
    }
}
