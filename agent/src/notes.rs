//! Customers' delivery instructions for the stops of the van's route ("leave it with the
//! neighbour at no. 12"), as the hub sends them in signed [`StopNote`]s, kept for the
//! driver's screen.
//!
//! Pure: notes and routes in, what to keep and show out; the brain persists the set in
//! the outbox's state (`stop_notes`) so a restart keeps them. A note belongs to its route
//! and parcel: the newest (by the hub's `issued_ms`) wins, an empty text removes it, and
//! loading a route drops every note of another route. A note may arrive before the route
//! it names (the two travel on different topics); it is kept, and shown once that route
//! is loaded, unless a route with yet another id comes first.

use std::collections::BTreeMap;

use doorstep_proto::{RouteId, StopId, StopNote, TrackingNumber};
use serde::{Deserialize, Serialize};

/// Notes kept at most (a route's parcels; removals count too). A note past it is refused
/// and counted: the hub sends it again with the route.
pub const MAX_NOTES: usize = 2_000;

/// One parcel's instructions, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptNote {
    /// The stop the parcel is at.
    pub stop_id: StopId,
    /// The instructions; empty: the customer removed them.
    pub text: String,
    /// The hub's time of issue, ms: an older note never replaces a newer one.
    pub issued_ms: i64,
}

/// What became of a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteOutcome {
    /// Kept (new, or newer than the one it replaces).
    Kept,
    /// Not newer than the one kept for the parcel (a repeat with the route, a late copy).
    Stale,
    /// [`MAX_NOTES`] are kept already.
    Full,
}

impl NoteOutcome {
    /// A short snake_case name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NoteOutcome::Kept => "stop_note_kept",
            NoteOutcome::Stale => "stop_note_stale",
            NoteOutcome::Full => "stop_note_refused_full",
        }
    }
}

/// The notes the agent keeps, by route and parcel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopNotes {
    notes: BTreeMap<RouteId, BTreeMap<TrackingNumber, KeptNote>>,
}

impl StopNotes {
    /// Takes a verified note.
    pub fn on_note(&mut self, note: &StopNote) -> NoteOutcome {
        let kept = self.notes.get(&note.route_id).and_then(|r| r.get(&note.tracking_number));
        match kept {
            Some(k) if k.issued_ms >= note.issued_ms => return NoteOutcome::Stale,
            None if self.len() >= MAX_NOTES => return NoteOutcome::Full,
            _ => {}
        }
        self.notes.entry(note.route_id.clone()).or_default().insert(
            note.tracking_number.clone(),
            KeptNote { stop_id: note.stop_id.clone(), text: note.text.clone(), issued_ms: note.issued_ms },
        );
        NoteOutcome::Kept
    }

    /// A route `route_id` is loaded: notes of every other route are dropped. Returns how
    /// many were.
    pub fn on_route(&mut self, route_id: &RouteId) -> usize {
        let before = self.len();
        self.notes.retain(|id, _| id == route_id);
        before - self.len()
    }

    /// The instructions in force for `stop_id` of route `route_id`, by parcel.
    pub fn for_stop<'a>(
        &'a self,
        route_id: &RouteId,
        stop_id: &'a StopId,
    ) -> impl Iterator<Item = (&'a TrackingNumber, &'a str)> + 'a {
        self.notes
            .get(route_id)
            .into_iter()
            .flatten()
            .filter(move |(_, n)| &n.stop_id == stop_id && !n.text.is_empty())
            .map(|(tn, n)| (tn, n.text.as_str()))
    }

    /// How many parcels of route `route_id` have instructions in force.
    pub fn in_force(&self, route_id: &RouteId) -> usize {
        self.notes.get(route_id).map_or(0, |r| r.values().filter(|n| !n.text.is_empty()).count())
    }

    /// Notes kept, removals included.
    pub fn len(&self) -> usize {
        self.notes.values().map(BTreeMap::len).sum()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use doorstep_proto::DeviceId;

    use super::*;

    fn note(route: &str, stop: &str, tn: &str, text: &str, issued_ms: i64) -> StopNote {
        StopNote {
            device: DeviceId::new("van-1").expect("id"),
            issued_ms,
            route_id: RouteId::new(route).expect("id"),
            stop_id: StopId::new(stop).expect("id"),
            tracking_number: TrackingNumber::new(tn).expect("tn"),
            text: text.to_owned(),
        }
    }

    fn shown(notes: &StopNotes, route: &str, stop: &str) -> Vec<String> {
        let (route, stop) = (RouteId::new(route).expect("id"), StopId::new(stop).expect("id"));
        notes.for_stop(&route, &stop).map(|(tn, text)| format!("{}: {text}", tn.as_str())).collect()
    }

    #[test]
    fn the_newest_note_for_a_parcel_wins_and_an_empty_one_removes_it() {
        let mut notes = StopNotes::default();
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0001", "Ring twice", 10)), NoteOutcome::Kept);
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0002", "Back door", 11)), NoteOutcome::Kept);
        assert_eq!(shown(&notes, "r1", "s1"), ["1ZA0001: Ring twice", "1ZA0002: Back door"]);
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0001", "Neighbour no. 12", 20)), NoteOutcome::Kept);
        // The route's repeat of the older note changes nothing.
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0001", "Ring twice", 10)), NoteOutcome::Stale);
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0001", "Neighbour no. 12", 20)), NoteOutcome::Stale);
        assert_eq!(shown(&notes, "r1", "s1"), ["1ZA0001: Neighbour no. 12", "1ZA0002: Back door"]);
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0002", "", 30)), NoteOutcome::Kept);
        assert_eq!(shown(&notes, "r1", "s1"), ["1ZA0001: Neighbour no. 12"]);
        assert_eq!(notes.in_force(&RouteId::new("r1").expect("id")), 1);
        // A late copy of the removed note does not bring it back.
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZA0002", "Back door", 11)), NoteOutcome::Stale);
        assert!(shown(&notes, "r2", "s1").is_empty(), "another route's stop is another stop");
        assert!(shown(&notes, "r1", "s2").is_empty());
    }

    #[test]
    fn a_new_route_drops_the_old_routes_notes_but_keeps_its_own_that_came_first() {
        let mut notes = StopNotes::default();
        notes.on_note(&note("r1", "s1", "1ZA0001", "Ring twice", 10));
        // The note for the next route overtook the route itself.
        notes.on_note(&note("r2", "s9", "1ZA0009", "Gate code is on the label", 12));
        assert_eq!(notes.on_route(&RouteId::new("r2").expect("id")), 1, "r1's note goes");
        assert_eq!(shown(&notes, "r2", "s9"), ["1ZA0009: Gate code is on the label"]);
        assert!(shown(&notes, "r1", "s1").is_empty());
        assert_eq!(notes.on_route(&RouteId::new("r2").expect("id")), 0, "the same route again keeps them");
        assert_eq!(notes.on_route(&RouteId::new("r3").expect("id")), 1);
        assert!(notes.is_empty());
    }

    #[test]
    fn notes_past_the_bound_are_refused_and_what_is_kept_survives_a_restart() {
        let mut notes = StopNotes::default();
        for i in 0..MAX_NOTES {
            assert_eq!(notes.on_note(&note("r1", "s1", &format!("1ZB{i:05}"), "x", 1)), NoteOutcome::Kept);
        }
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZC00000", "x", 1)), NoteOutcome::Full);
        // A newer note for a parcel already kept still replaces it.
        assert_eq!(notes.on_note(&note("r1", "s1", "1ZB00000", "y", 2)), NoteOutcome::Kept);
        let json = serde_json::to_vec(&notes).expect("encode");
        assert_eq!(serde_json::from_slice::<StopNotes>(&json).expect("decode"), notes);
    }
}
