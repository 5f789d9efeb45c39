//! The error for a key that its section does not define, with a hint that
//! names the nearest known key or the section where the key belongs.

use super::spec::{Kind, Section};
use super::{join_path, Validator};
use crate::error::ErrorKind;
use crate::nearest::nearest;

impl Validator<'_> {
    pub(super) fn unknown_key(
        &mut self,
        section: &'static Section,
        name: &str,
        path: &str,
        at: usize,
    ) {
        let near_here = nearest(name, section.key_names());
        if let (Some(example), None) = (section.example, near_here) {
            // In a choice section such as `source`, a key of the same name
            // in another section is a coincidence, so the hint shows the
            // choices.
            let message = format!("unknown key `{name}` in {}", section.header());
            self.report(
                at,
                ErrorKind::UnknownKey,
                path,
                message,
                Some(example.to_string()),
            );
            return;
        }
        let homes: Vec<&'static Section> = self
            .sections
            .iter()
            .copied()
            .filter(|other| !std::ptr::eq(*other, section) && other.key(name).is_some())
            .collect();
        let location = if section.path.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", section.header())
        };
        let mut message = format!("unknown key `{name}` {location}");

        let hint = if !homes.is_empty() {
            let places: Vec<String> = homes.iter().map(|home| home.header()).collect();
            message.push_str(&format!(": it belongs in {}", join_or(&places)));
            match (near_here, homes.as_slice()) {
                (Some(near), _) => Some(format!("or did you mean `{near}`?")),
                (None, [home]) => Some(move_hint(home, name)),
                _ => None,
            }
        } else if let Some(near) = near_here {
            Some(format!("did you mean `{near}`?"))
        } else if let Some((near, home)) = self.nearest_elsewhere(name) {
            Some(format!("did you mean `{near}` in {}?", home.header()))
        } else {
            let names: Vec<&str> = section.key_names().collect();
            Some(format!(
                "the keys of {} are {}",
                section.header(),
                names.join(", ")
            ))
        };
        self.report(at, ErrorKind::UnknownKey, path, message, hint);
    }

    fn nearest_elsewhere(&self, name: &str) -> Option<(&'static str, &'static Section)> {
        let pairs: Vec<(&'static str, &'static Section)> = self
            .sections
            .iter()
            .flat_map(|section| section.key_names().map(move |key| (key, *section)))
            .collect();
        let near = nearest(name, pairs.iter().map(|(key, _)| *key))?;
        pairs.into_iter().find(|(key, _)| *key == near)
    }
}

/// Returns "A", "A or B", "A, B or C".
fn join_or(items: &[String]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn move_hint(home: &Section, name: &str) -> String {
    let is_table = matches!(home.key(name).map(|key| &key.kind), Some(Kind::Table(_)));
    if is_table {
        return format!("write its header as [{}]", join_path(home.path, name));
    }
    if home.path.is_empty() {
        return "move it above the first [section] header".to_string();
    }
    if home.array {
        format!("move it into a {} entry", home.header())
    } else {
        format!("move it under the {} header", home.header())
    }
}
