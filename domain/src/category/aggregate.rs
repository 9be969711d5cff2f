use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{CategoryCommand, CategoryError, CategoryEvent};
use crate::values::CategoryName;

/// A category's state: its current name, once created.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// The current name; `None` before creation.
    pub name: Option<CategoryName>,
}

impl Aggregate for Category {
    const TYPE: &'static str = "category";
    type Command = CategoryCommand;
    type Event = CategoryEvent;
    type Error = CategoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            CategoryCommand::CreateCategory { name } => {
                if self.name.is_some() {
                    return Err(CategoryError::AlreadyExists);
                }
                sink.write(CategoryEvent::CategoryCreated { name }, self).await;
            }
            CategoryCommand::RenameCategory { name } => match &self.name {
                None => return Err(CategoryError::NotFound),
                // Renaming to the very same name changes nothing, so nothing is recorded.
                Some(current) if *current == name => {}
                Some(_) => sink.write(CategoryEvent::CategoryRenamed { name }, self).await,
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CategoryEvent::CategoryCreated { name } | CategoryEvent::CategoryRenamed { name } => {
                self.name = Some(name)
            }
        }
    }
}
