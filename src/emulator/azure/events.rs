//! `/metadata/scheduledevents`: the document from the file, and approvals (`POST
//! {"StartRequests":[{"EventId":…}]}`) that take an event out of it. The served copy
//! lives in memory and starts over when the file's events change.

use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::config::ScheduledEvents;

/// An approval as POSTed.
#[derive(Debug, Deserialize)]
struct Approval {
    #[serde(rename = "StartRequests")]
    start_requests: Vec<StartRequest>,
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    #[serde(rename = "EventId")]
    event_id: String,
}

/// The served document and the file's document it started from.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    from: ScheduledEvents,
    now: ScheduledEvents,
}

/// The scheduled events as served; a std mutex, held only for a copy or an update.
#[derive(Debug, Default)]
pub struct Events {
    served: Mutex<Option<Served>>,
}

impl Events {
    /// The document for a GET.
    pub fn document(&self, file: &ScheduledEvents) -> Json {
        let mut served = self.served.lock().expect("scheduled events lock");
        let s = current(&mut served, file);
        json!({
            "DocumentIncarnation": s.document_incarnation,
            "Events": s.events,
        })
    }

    /// Applies a POSTed approval: the named events leave the document and its
    /// incarnation goes up (only when something left: the document is otherwise the
    /// same). Names of events not (or no longer) in the document are ignored. An
    /// error says why the body is not an approval.
    pub fn approve(&self, file: &ScheduledEvents, body: &[u8]) -> Result<(), String> {
        let approval: Approval = serde_json::from_slice(body).map_err(|e| {
            format!("Bad request. The body must be {{\"StartRequests\":[{{\"EventId\":\"...\"}}]}} ({e})")
        })?;
        let mut served = self.served.lock().expect("scheduled events lock");
        let s = current(&mut served, file);
        let before = s.events.len();
        s.events.retain(|e| {
            let id = e.get("EventId").and_then(Json::as_str).unwrap_or("");
            !approval
                .start_requests
                .iter()
                .any(|r| r.event_id.eq_ignore_ascii_case(id))
        });
        if s.events.len() != before {
            s.document_incarnation += 1;
        }
        Ok(())
    }
}

/// The served document, started over from `file` when the file's events changed.
fn current<'a>(served: &'a mut Option<Served>, file: &ScheduledEvents) -> &'a mut ScheduledEvents {
    if served.as_ref().is_none_or(|s| s.from != *file) {
        *served = Some(Served {
            from: file.clone(),
            now: file.clone(),
        });
    }
    &mut served.as_mut().expect("just set").now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ids: &[&str]) -> ScheduledEvents {
        ScheduledEvents {
            document_incarnation: 1,
            events: ids
                .iter()
                .map(|id| json!({"EventId": id, "DurationInSeconds": 9}))
                .collect(),
        }
    }

    #[test]
    fn approvals_remove_events_and_bump_the_incarnation() {
        let ev = Events::default();
        let f = file(&["a-1", "b-2"]);
        assert_eq!(ev.document(&f)["DocumentIncarnation"], 1);
        assert_eq!(ev.document(&f)["Events"][0]["DurationInSeconds"], 9);
        ev.approve(&f, br#"{"StartRequests":[{"EventId":"A-1"}]}"#)
            .unwrap();
        let d = ev.document(&f);
        assert_eq!(d["DocumentIncarnation"], 2);
        assert_eq!(d["Events"].as_array().unwrap().len(), 1);
        assert_eq!(d["Events"][0]["EventId"], "b-2");
        // Naming nothing that is left changes nothing.
        ev.approve(&f, br#"{"StartRequests":[{"EventId":"a-1"}]}"#)
            .unwrap();
        assert_eq!(ev.document(&f)["DocumentIncarnation"], 2);
        // A changed file starts over.
        let g = file(&["a-1", "c-3"]);
        assert_eq!(ev.document(&g)["DocumentIncarnation"], 1);
        assert_eq!(ev.document(&g)["Events"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bodies_that_are_not_approvals_are_refused() {
        let ev = Events::default();
        let f = file(&["a-1"]);
        for body in [
            &b""[..],
            b"not json",
            b"{}",
            br#"{"StartRequests":"a-1"}"#,
            br#"{"StartRequests":[{"Id":"a-1"}]}"#,
        ] {
            assert!(ev.approve(&f, body).is_err(), "{body:?}");
        }
        assert_eq!(ev.document(&f)["Events"].as_array().unwrap().len(), 1);
    }
}
