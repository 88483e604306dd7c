//! Which invocation a line of output belongs to when an instance runs several at once
//! (`concurrency > 1`): its stdout and stderr are shared by every invocation in flight.
//!
//! The rule (ARCHITECTURE.md, "Logs of concurrent invocations"): a line that carries the
//! request id of an invocation in flight, as one of its first three tab-separated fields (the
//! shape of Lambda's log lines, `timestamp\trequestId\tLEVEL\tmessage`, which nimbus's Node and
//! Python bootstraps write when `concurrency > 1`; Lambda's Python format puts the level first),
//! belongs to that invocation; any other line belongs to the oldest invocation in flight. Lines
//! wait here until their invocation ends and takes them.

use std::collections::HashMap;

/// The invocations in flight on one instance and the output attributed to each so far.
#[derive(Default)]
pub(crate) struct Attribution {
    /// Request ids in the order their invocations began (the oldest first).
    in_flight: Vec<String>,
    lines: HashMap<String, String>,
}

impl Attribution {
    /// Invocation `id` begins.
    pub(crate) fn begin(&mut self, id: &str) {
        self.in_flight.push(id.to_owned());
    }

    /// Attribute `text` (whole lines) to the invocations in flight, then end invocation `id`
    /// and return the output attributed to it.
    pub(crate) fn end(&mut self, id: &str, text: &str) -> String {
        self.add(text);
        self.in_flight.retain(|i| i != id);
        self.lines.remove(id).unwrap_or_default()
    }

    fn add(&mut self, text: &str) {
        for line in text.split_inclusive('\n') {
            let owner = self.tagged(line).or_else(|| self.in_flight.first()).cloned();
            if let Some(owner) = owner {
                self.lines.entry(owner).or_default().push_str(line);
            }
        }
    }

    /// The invocation in flight whose request id `line` carries in one of its first fields.
    fn tagged(&self, line: &str) -> Option<&String> {
        line.split('\t').take(3).find_map(|field| self.in_flight.iter().find(|id| id.as_str() == field.trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_lines_go_to_their_invocation_and_the_rest_to_the_oldest() {
        let mut a = Attribution::default();
        a.begin("r1");
        a.begin("r2");
        a.begin("r3");
        let text = "2026-01-01T00:00:00.000Z\tr2\tINFO\tfrom two\n\
                    untagged\n\
                    [ERROR]\t2026-01-01T00:00:00.000Z\tr3\tpython's shape\n\
                    2026-01-01T00:00:00.000Z\tr1\tINFO\tfrom one\n\
                    2026-01-01T00:00:00.000Z\tgone\tINFO\tan id not in flight\n";
        assert_eq!(a.end("r2", text), "2026-01-01T00:00:00.000Z\tr2\tINFO\tfrom two\n");
        assert_eq!(
            a.end("r1", ""),
            "untagged\n2026-01-01T00:00:00.000Z\tr1\tINFO\tfrom one\n2026-01-01T00:00:00.000Z\tgone\tINFO\tan id not in flight\n"
        );
        // r1 ended: r3 is now the oldest and takes untagged lines.
        assert_eq!(a.end("r3", "late\n"), "[ERROR]\t2026-01-01T00:00:00.000Z\tr3\tpython's shape\nlate\n");
        assert!(a.lines.is_empty() && a.in_flight.is_empty(), "nothing is kept after the last invocation");
    }

    #[test]
    fn a_message_mentioning_an_id_past_the_third_field_is_not_taken_for_a_tag() {
        let mut a = Attribution::default();
        a.begin("r1");
        a.begin("r2");
        assert_eq!(a.end("r2", "a\tb\tc\tr2\n"), "");
        assert_eq!(a.end("r1", ""), "a\tb\tc\tr2\n");
    }
}
