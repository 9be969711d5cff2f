use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use uuid::Uuid;

use super::*;
use crate::values::{CategoryIds, Director, Rating, Storyline, Title};
use crate::Actor;

type MovieTest = TestFramework<Movie>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A point in business time: March 2026, the given day and hour (UTC).
fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
}

/// "Now" for every command: well after every business time used below.
fn now() -> DateTime<Utc> {
    at(31, 12)
}

fn title(raw: &str) -> Title {
    Title::parse(raw).unwrap()
}

fn storyline(raw: &str) -> Storyline {
    Storyline::parse(raw).unwrap()
}

fn director(raw: &str) -> Director {
    Director::parse(raw).unwrap()
}

fn rating(value: f64) -> Rating {
    Rating::parse(value).unwrap()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// The categories every test movie has; fixed so that "same value" comparisons hold.
fn categories() -> CategoryIds {
    CategoryIds::parse(vec![
        Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001),
        Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0002),
    ])
    .unwrap()
}

fn details() -> MovieDetails {
    MovieDetails {
        title: title("Heat"),
        storyline: storyline("A thief and a detective."),
        release_date: date(1995, 12, 15),
        rating: rating(8.3),
        director: Some(director("Michael Mann")),
        category_ids: categories(),
    }
}

fn added_from(details: MovieDetails) -> MovieEvent {
    let MovieDetails { title, storyline, release_date, rating, director, category_ids } = details;
    MovieEvent::MovieAdded { title, storyline, release_date, rating, director, category_ids }
}

fn added() -> MovieEvent {
    added_from(details())
}

fn rented(rental_id: Uuid, customer_id: Uuid, rented_at: DateTime<Utc>) -> MovieEvent {
    MovieEvent::MovieRented { rental_id, customer_id, rented_at }
}

fn returned(rental_id: Uuid, customer_id: Uuid, returned_at: DateTime<Utc>) -> MovieEvent {
    MovieEvent::MovieReturned { rental_id, customer_id, returned_at }
}

fn rent(rental_id: Uuid, customer_id: Uuid, rented_at: DateTime<Utc>) -> MovieCommand {
    MovieCommand::RentMovie { rental_id, customer_id, rented_at, now: now() }
}

fn give_back(rental_id: Uuid, by: Actor, returned_at: DateTime<Utc>) -> MovieCommand {
    MovieCommand::ReturnMovie { rental_id, by, returned_at, now: now() }
}

fn update(changes: MovieChanges) -> MovieCommand {
    MovieCommand::UpdateMovie { changes }
}

/// The `MovieUpdated` event that carries exactly the given fields (enum variants have no
/// struct-update syntax, so the fields are spelled with `MovieChanges { .., ..Default::default() }`).
fn updated(fields: MovieChanges) -> MovieEvent {
    let MovieChanges { title, storyline, release_date, rating, director, category_ids } = fields;
    MovieEvent::MovieUpdated { title, storyline, release_date, rating, director, category_ids }
}

fn replay(events: Vec<MovieEvent>) -> Movie {
    let mut movie = Movie::default();
    for event in events {
        movie.apply(event);
    }
    movie
}

// ---------------------------------------------------------------------------------------------
// AddMovie
// ---------------------------------------------------------------------------------------------

#[test]
fn adding_a_new_movie_records_all_its_details() {
    MovieTest::with(())
        .given_no_previous_events()
        .when(MovieCommand::AddMovie { details: details() })
        .then_expect_events(vec![added()]);
}

#[test]
fn adding_a_movie_without_a_director_records_no_director() {
    let details = MovieDetails { director: None, ..details() };
    let expected = MovieEvent::MovieAdded {
        title: details.title.clone(),
        storyline: details.storyline.clone(),
        release_date: details.release_date,
        rating: details.rating,
        director: None,
        category_ids: details.category_ids.clone(),
    };
    MovieTest::with(())
        .given_no_previous_events()
        .when(MovieCommand::AddMovie { details })
        .then_expect_events(vec![expected]);
}

#[test]
fn adding_a_movie_that_exists_already_is_refused() {
    MovieTest::with(())
        .given(vec![added()])
        .when(MovieCommand::AddMovie { details: details() })
        .then_expect_error(MovieError::AlreadyExists);
}

#[test]
fn adding_a_movie_that_was_retired_is_refused() {
    MovieTest::with(())
        .given(vec![added(), MovieEvent::MovieRetired {}])
        .when(MovieCommand::AddMovie { details: details() })
        .then_expect_error(MovieError::AlreadyExists);
}

// ---------------------------------------------------------------------------------------------
// UpdateMovie
// ---------------------------------------------------------------------------------------------

#[test]
fn updating_an_unknown_movie_is_refused() {
    MovieTest::with(())
        .given_no_previous_events()
        .when(update(MovieChanges { title: Some(title("Heat")), ..Default::default() }))
        .then_expect_error(MovieError::NotFound);
}

#[test]
fn updating_records_only_the_fields_that_change() {
    // Arrange: the rating and the categories are given with their current values.
    let changes = MovieChanges {
        title: Some(title("Heat (1995)")),
        rating: Some(rating(8.3)),
        release_date: Some(date(1995, 12, 8)),
        category_ids: Some(categories()),
        ..Default::default()
    };
    let expected = updated(MovieChanges {
        title: Some(title("Heat (1995)")),
        release_date: Some(date(1995, 12, 8)),
        ..Default::default()
    });

    // Act / Assert
    MovieTest::with(()).given(vec![added()]).when(update(changes)).then_expect_events(vec![expected]);
}

#[test]
fn updating_every_field_to_a_new_value_records_every_field() {
    let new_categories = CategoryIds::parse(vec![Uuid::now_v7()]).unwrap();
    let changes = MovieChanges {
        title: Some(title("Thief")),
        storyline: Some(storyline("")),
        release_date: Some(date(1981, 3, 27)),
        rating: Some(rating(7.4)),
        director: Some(Some(director("M. Mann"))),
        category_ids: Some(new_categories.clone()),
    };
    MovieTest::with(()).given(vec![added()]).when(update(changes)).then_expect_events(vec![
        MovieEvent::MovieUpdated {
            title: Some(title("Thief")),
            storyline: Some(storyline("")),
            release_date: Some(date(1981, 3, 27)),
            rating: Some(rating(7.4)),
            director: Some(Some(director("M. Mann"))),
            category_ids: Some(new_categories),
        },
    ]);
}

#[test]
fn updating_with_every_field_equal_to_its_current_value_records_nothing() {
    let current = details();
    let changes = MovieChanges {
        title: Some(current.title),
        storyline: Some(current.storyline),
        release_date: Some(current.release_date),
        rating: Some(current.rating),
        director: Some(current.director),
        category_ids: Some(current.category_ids),
    };
    MovieTest::with(()).given(vec![added()]).when(update(changes)).then_expect_events(vec![]);
}

#[test]
fn an_empty_update_records_nothing() {
    MovieTest::with(()).given(vec![added()]).when(update(MovieChanges::default())).then_expect_events(vec![]);
}

#[test]
fn updating_compares_with_the_values_of_earlier_updates() {
    let earlier = updated(MovieChanges { title: Some(title("Heat II")), ..Default::default() });
    MovieTest::with(())
        .given(vec![added(), earlier])
        .when(update(MovieChanges { title: Some(title("Heat II")), ..Default::default() }))
        .then_expect_events(vec![]);
}

#[test]
fn changing_back_to_the_original_value_after_an_update_is_a_change() {
    let earlier = updated(MovieChanges { title: Some(title("Heat II")), ..Default::default() });
    MovieTest::with(())
        .given(vec![added(), earlier])
        .when(update(MovieChanges { title: Some(title("Heat")), ..Default::default() }))
        .then_expect_events(vec![updated(MovieChanges { title: Some(title("Heat")), ..Default::default() })]);
}

#[test]
fn clearing_the_director_records_a_null_director() {
    MovieTest::with(())
        .given(vec![added()])
        .when(update(MovieChanges { director: Some(None), ..Default::default() }))
        .then_expect_events(vec![updated(MovieChanges { director: Some(None), ..Default::default() })]);
}

#[test]
fn clearing_a_director_that_is_not_set_records_nothing() {
    MovieTest::with(())
        .given(vec![added(), updated(MovieChanges { director: Some(None), ..Default::default() })])
        .when(update(MovieChanges { director: Some(None), ..Default::default() }))
        .then_expect_events(vec![]);
}

#[test]
fn a_cleared_director_is_gone_from_the_state() {
    let movie = replay(vec![added(), updated(MovieChanges { director: Some(None), ..Default::default() })]);
    let details = movie.details.unwrap();
    assert_eq!(details.director, None);
    assert_eq!(details.title, title("Heat"), "fields absent from the update are kept");
}

#[test]
fn updating_a_rented_movie_is_allowed() {
    MovieTest::with(())
        .given(vec![added(), rented(Uuid::now_v7(), Uuid::now_v7(), at(2, 10))])
        .when(update(MovieChanges { rating: Some(rating(9.0)), ..Default::default() }))
        .then_expect_events(vec![updated(MovieChanges { rating: Some(rating(9.0)), ..Default::default() })]);
}

#[test]
fn updating_a_retired_movie_is_refused() {
    MovieTest::with(())
        .given(vec![added(), MovieEvent::MovieRetired {}])
        .when(update(MovieChanges { title: Some(title("Heat II")), ..Default::default() }))
        .then_expect_error(MovieError::Retired);
}

#[test]
fn updating_a_retired_movie_with_no_change_is_refused_too() {
    MovieTest::with(())
        .given(vec![added(), MovieEvent::MovieRetired {}])
        .when(update(MovieChanges::default()))
        .then_expect_error(MovieError::Retired);
}

// ---------------------------------------------------------------------------------------------
// RetireMovie
// ---------------------------------------------------------------------------------------------

#[test]
fn retiring_an_unknown_movie_is_refused() {
    MovieTest::with(())
        .given_no_previous_events()
        .when(MovieCommand::RetireMovie)
        .then_expect_error(MovieError::NotFound);
}

#[test]
fn retiring_an_available_movie_records_its_retirement() {
    MovieTest::with(())
        .given(vec![added()])
        .when(MovieCommand::RetireMovie)
        .then_expect_events(vec![MovieEvent::MovieRetired {}]);
}

#[test]
fn retiring_a_movie_whose_copy_came_back_records_its_retirement() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10)), returned(rental, customer, at(3, 10))])
        .when(MovieCommand::RetireMovie)
        .then_expect_events(vec![MovieEvent::MovieRetired {}]);
}

#[test]
fn retiring_a_rented_movie_is_refused_as_not_available() {
    MovieTest::with(())
        .given(vec![added(), rented(Uuid::now_v7(), Uuid::now_v7(), at(2, 10))])
        .when(MovieCommand::RetireMovie)
        .then_expect_error(MovieError::NotAvailable);
}

#[test]
fn retiring_a_retired_movie_is_refused() {
    MovieTest::with(())
        .given(vec![added(), MovieEvent::MovieRetired {}])
        .when(MovieCommand::RetireMovie)
        .then_expect_error(MovieError::Retired);
}

// ---------------------------------------------------------------------------------------------
// RentMovie
// ---------------------------------------------------------------------------------------------

#[test]
fn renting_an_unknown_movie_is_refused() {
    MovieTest::with(())
        .given_no_previous_events()
        .when(rent(Uuid::now_v7(), Uuid::now_v7(), at(2, 10)))
        .then_expect_error(MovieError::NotFound);
}

#[test]
fn renting_an_available_movie_records_the_rental() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added()])
        .when(rent(rental, customer, at(2, 10)))
        .then_expect_events(vec![rented(rental, customer, at(2, 10))]);
}

#[test]
fn renting_at_exactly_now_is_allowed() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added()])
        .when(rent(rental, customer, now()))
        .then_expect_events(vec![rented(rental, customer, now())]);
}

#[test]
fn renting_a_rented_movie_is_refused_as_not_available() {
    MovieTest::with(())
        .given(vec![added(), rented(Uuid::now_v7(), Uuid::now_v7(), at(2, 10))])
        .when(rent(Uuid::now_v7(), Uuid::now_v7(), at(3, 10)))
        .then_expect_error(MovieError::NotAvailable);
}

#[test]
fn renting_a_movie_to_the_customer_who_holds_it_is_refused_as_not_available() {
    let customer = Uuid::now_v7();
    MovieTest::with(())
        .given(vec![added(), rented(Uuid::now_v7(), customer, at(2, 10))])
        .when(rent(Uuid::now_v7(), customer, at(3, 10)))
        .then_expect_error(MovieError::NotAvailable);
}

#[test]
fn renting_a_retired_movie_is_refused_as_not_available() {
    MovieTest::with(())
        .given(vec![added(), MovieEvent::MovieRetired {}])
        .when(rent(Uuid::now_v7(), Uuid::now_v7(), at(2, 10)))
        .then_expect_error(MovieError::NotAvailable);
}

#[test]
fn renting_in_the_future_is_refused() {
    MovieTest::with(())
        .given(vec![added()])
        .when(rent(Uuid::now_v7(), Uuid::now_v7(), now() + Duration::seconds(1)))
        .then_expect_error(MovieError::RentedInFuture);
}

#[test]
fn a_back_dated_rental_without_a_previous_return_is_allowed() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let long_ago = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    MovieTest::with(())
        .given(vec![added()])
        .when(rent(rental, customer, long_ago))
        .then_expect_events(vec![rented(rental, customer, long_ago)]);
}

#[test]
fn a_back_dated_rental_before_the_previous_return_is_refused() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10)), returned(rental, customer, at(5, 10))])
        .when(rent(Uuid::now_v7(), Uuid::now_v7(), at(5, 10) - Duration::seconds(1)))
        .then_expect_error(MovieError::RentedBeforePreviousReturn);
}

#[test]
fn a_rental_starting_exactly_at_the_previous_return_is_allowed() {
    let (first, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let (second, next_customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(first, customer, at(2, 10)), returned(first, customer, at(5, 10))])
        .when(rent(second, next_customer, at(5, 10)))
        .then_expect_events(vec![rented(second, next_customer, at(5, 10))]);
}

#[test]
fn a_returned_movie_can_be_rented_again_by_the_same_customer() {
    let (first, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let second = Uuid::now_v7();
    MovieTest::with(())
        .given(vec![added(), rented(first, customer, at(2, 10)), returned(first, customer, at(3, 10))])
        .when(rent(second, customer, at(4, 10)))
        .then_expect_events(vec![rented(second, customer, at(4, 10))]);
}

#[test]
fn times_rented_counts_every_rental() {
    let (first, second, customer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut movie = replay(vec![added()]);
    assert_eq!(movie.times_rented, 0);

    movie.apply(rented(first, customer, at(2, 10)));
    assert_eq!(movie.times_rented, 1);
    movie.apply(returned(first, customer, at(3, 10)));
    assert_eq!(movie.times_rented, 1, "a return is not a rental");
    movie.apply(rented(second, customer, at(4, 10)));
    assert_eq!(movie.times_rented, 2);
    assert_eq!(movie.last_returned_at, Some(at(3, 10)));
}

// ---------------------------------------------------------------------------------------------
// ReturnMovie
// ---------------------------------------------------------------------------------------------

#[test]
fn returning_an_unknown_movie_is_refused() {
    let customer = Uuid::now_v7();
    MovieTest::with(())
        .given_no_previous_events()
        .when(give_back(Uuid::now_v7(), Actor::customer(customer), at(3, 10)))
        .then_expect_error(MovieError::NotFound);
}

#[test]
fn returning_a_movie_that_is_not_rented_is_refused_as_not_active() {
    let customer = Uuid::now_v7();
    MovieTest::with(())
        .given(vec![added()])
        .when(give_back(Uuid::now_v7(), Actor::customer(customer), at(3, 10)))
        .then_expect_error(MovieError::NotActive);
}

#[test]
fn returning_another_rental_than_the_open_one_is_refused_as_not_active() {
    let customer = Uuid::now_v7();
    MovieTest::with(())
        .given(vec![added(), rented(Uuid::now_v7(), customer, at(2, 10))])
        .when(give_back(Uuid::now_v7(), Actor::customer(customer), at(3, 10)))
        .then_expect_error(MovieError::NotActive);
}

#[test]
fn returning_a_rental_twice_is_refused_as_not_active() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10)), returned(rental, customer, at(3, 10))])
        .when(give_back(rental, Actor::customer(customer), at(3, 10)))
        .then_expect_error(MovieError::NotActive);
}

#[test]
fn returning_an_earlier_rental_while_a_later_one_is_open_is_refused_as_not_active() {
    let (first, second, customer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![
            added(),
            rented(first, customer, at(2, 10)),
            returned(first, customer, at(3, 10)),
            rented(second, customer, at(4, 10)),
        ])
        .when(give_back(first, Actor::customer(customer), at(5, 10)))
        .then_expect_error(MovieError::NotActive);
}

#[test]
fn the_renter_returning_the_copy_records_the_return() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::customer(customer), at(3, 10)))
        .then_expect_events(vec![returned(rental, customer, at(3, 10))]);
}

#[test]
fn another_customer_returning_the_copy_is_refused() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::customer(Uuid::now_v7()), at(3, 10)))
        .then_expect_error(MovieError::NotTheRenter);
}

#[test]
fn an_admin_returning_the_copy_for_the_customer_records_a_return_that_names_the_customer() {
    let (rental, customer, admin) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::admin(admin), at(3, 10)))
        .then_expect_events(vec![returned(rental, customer, at(3, 10))]);
}

#[test]
fn returning_in_the_future_is_refused() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::admin(Uuid::now_v7()), now() + Duration::seconds(1)))
        .then_expect_error(MovieError::ReturnedInFuture);
}

#[test]
fn returning_before_the_rent_is_refused() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::admin(Uuid::now_v7()), at(2, 10) - Duration::seconds(1)))
        .then_expect_error(MovieError::ReturnedBeforeRent);
}

#[test]
fn returning_at_the_very_moment_of_the_rent_is_allowed() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::customer(customer), at(2, 10)))
        .then_expect_events(vec![returned(rental, customer, at(2, 10))]);
}

#[test]
fn returning_at_exactly_now_is_allowed() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    MovieTest::with(())
        .given(vec![added(), rented(rental, customer, at(2, 10))])
        .when(give_back(rental, Actor::customer(customer), now()))
        .then_expect_events(vec![returned(rental, customer, now())]);
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[test]
fn availability_follows_rent_return_and_retirement() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let mut movie = Movie::default();
    assert!(!movie.available(), "a movie not yet added is not available");

    movie.apply(added());
    assert!(movie.available(), "an added movie is available");

    movie.apply(rented(rental, customer, at(2, 10)));
    assert!(!movie.available(), "a rented movie is not available");
    assert_eq!(
        movie.rental,
        Some(OpenRental { rental_id: rental, customer_id: customer, rented_at: at(2, 10) })
    );

    movie.apply(returned(rental, customer, at(3, 10)));
    assert!(movie.available(), "a returned movie is available again");
    assert_eq!(movie.rental, None);

    movie.apply(MovieEvent::MovieRetired {});
    assert!(!movie.available(), "a retired movie is not available");
    assert!(movie.retired);
}

#[test]
fn the_movie_state_round_trips_through_json_as_a_snapshot() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let movie = replay(vec![
        added(),
        rented(rental, customer, at(2, 10)),
        returned(rental, customer, at(3, 10)),
        rented(Uuid::now_v7(), customer, at(4, 10)),
    ]);
    let json = serde_json::to_string(&movie).unwrap();
    let back: Movie = serde_json::from_str(&json).unwrap();
    assert_eq!(back, movie);
}

// ---------------------------------------------------------------------------------------------
// Serialisation of events
// ---------------------------------------------------------------------------------------------

fn round_trip(event: &MovieEvent) -> MovieEvent {
    let json = serde_json::to_string(event).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json} does not parse back: {e}"))
}

#[test]
fn every_movie_event_round_trips_through_json() {
    let (rental, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let events = vec![
        added(),
        added_from(MovieDetails { director: None, ..details() }),
        updated(MovieChanges {
            title: Some(title("Thief")),
            storyline: Some(storyline("")),
            release_date: Some(date(1981, 3, 27)),
            rating: Some(rating(7.4)),
            director: Some(Some(director("M. Mann"))),
            category_ids: Some(categories()),
        }),
        updated(MovieChanges { title: Some(title("Thief")), ..Default::default() }),
        updated(MovieChanges { director: Some(None), ..Default::default() }),
        updated(MovieChanges::default()),
        MovieEvent::MovieRetired {},
        rented(rental, customer, at(2, 10) + Duration::milliseconds(123)),
        returned(rental, customer, at(3, 10)),
    ];
    for event in &events {
        assert_eq!(&round_trip(event), event);
    }
}

#[test]
fn a_partial_update_serialises_only_its_present_fields() {
    let event = updated(MovieChanges { rating: Some(rating(9.5)), ..Default::default() });
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json, serde_json::json!({ "MovieUpdated": { "rating": 9.5 } }));
}

#[test]
fn a_cleared_director_serialises_as_null_and_stays_cleared() {
    let event = updated(MovieChanges { director: Some(None), ..Default::default() });
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json, serde_json::json!({ "MovieUpdated": { "director": null } }));

    let back: MovieEvent = serde_json::from_value(json).unwrap();
    match back {
        MovieEvent::MovieUpdated { director, title, .. } => {
            assert_eq!(director, Some(None), "a null director is a clearing, not an absence");
            assert_eq!(title, None);
        }
        other => panic!("expected MovieUpdated, got {other:?}"),
    }
}

#[test]
fn an_absent_director_deserialises_as_no_change() {
    let json = serde_json::json!({ "MovieUpdated": { "title": "Thief" } });
    let back: MovieEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, updated(MovieChanges { title: Some(title("Thief")), ..Default::default() }));
}
