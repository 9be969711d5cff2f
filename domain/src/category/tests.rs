use cqrs_es::test::TestFramework;

use super::*;
use crate::values::CategoryName;

type CategoryTest = TestFramework<Category>;

fn name(raw: &str) -> CategoryName {
    CategoryName::parse(raw).unwrap()
}

#[test]
fn creating_a_new_category_records_its_name() {
    CategoryTest::with(())
        .given_no_previous_events()
        .when(CategoryCommand::CreateCategory { name: name("Drama") })
        .then_expect_events(vec![CategoryEvent::CategoryCreated { name: name("Drama") }]);
}

#[test]
fn creating_an_existing_category_is_refused() {
    CategoryTest::with(())
        .given(vec![CategoryEvent::CategoryCreated { name: name("Drama") }])
        .when(CategoryCommand::CreateCategory { name: name("Other") })
        .then_expect_error(CategoryError::AlreadyExists);
}

#[test]
fn renaming_records_the_new_name() {
    CategoryTest::with(())
        .given(vec![CategoryEvent::CategoryCreated { name: name("Drama") }])
        .when(CategoryCommand::RenameCategory { name: name("Dramas") })
        .then_expect_events(vec![CategoryEvent::CategoryRenamed { name: name("Dramas") }]);
}

#[test]
fn renaming_to_the_same_name_records_nothing() {
    CategoryTest::with(())
        .given(vec![
            CategoryEvent::CategoryCreated { name: name("Drama") },
            CategoryEvent::CategoryRenamed { name: name("Noir") },
        ])
        .when(CategoryCommand::RenameCategory { name: name("Noir") })
        .then_expect_events(vec![]);
}

#[test]
fn renaming_only_the_case_is_a_change() {
    CategoryTest::with(())
        .given(vec![CategoryEvent::CategoryCreated { name: name("drama") }])
        .when(CategoryCommand::RenameCategory { name: name("Drama") })
        .then_expect_events(vec![CategoryEvent::CategoryRenamed { name: name("Drama") }]);
}

#[test]
fn renaming_an_unknown_category_is_refused() {
    CategoryTest::with(())
        .given_no_previous_events()
        .when(CategoryCommand::RenameCategory { name: name("Drama") })
        .then_expect_error(CategoryError::NotFound);
}
