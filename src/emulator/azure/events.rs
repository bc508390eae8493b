//! `/metadata/scheduledevents`: the document from the file, and approvals (`POST
//! {"StartRequests":[{"EventId":…}]}`) that move an event to `EventStatus: "Started"`,
//! as Azure does; it stays listed, `Started`, until the file no longer lists it. The
//! served state lives in memory; `DocumentIncarnation` only goes up: by one for each
//! approval that starts something and for each edit of the file's events (or to the
//! file's `document_incarnation`, when that is higher), so a client never sees a number
//! again for a different document.

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

/// What is served: the file's events as last seen, which of them were approved, and
/// the incarnation.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    file: ScheduledEvents,
    incarnation: u64,
    /// EventIds approved (as the file spells them), each still listed in `file`.
    started: Vec<String>,
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
        let events: Vec<Json> = s
            .file
            .events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if s.started
                    .iter()
                    .any(|id| id.eq_ignore_ascii_case(event_id(&e)))
                {
                    e["EventStatus"] = json!("Started");
                }
                e
            })
            .collect();
        json!({
            "DocumentIncarnation": s.incarnation,
            "Events": events,
        })
    }

    /// Applies a POSTed approval: the named events become `Started` and the
    /// incarnation goes up (only when one did: the document is otherwise the same).
    /// Names of events not in the document, or already started, are ignored. An error
    /// says why the body is not an approval.
    pub fn approve(&self, file: &ScheduledEvents, body: &[u8]) -> Result<(), String> {
        let approval: Approval = serde_json::from_slice(body).map_err(|e| {
            format!("Bad request. The body must be {{\"StartRequests\":[{{\"EventId\":\"...\"}}]}} ({e})")
        })?;
        let mut served = self.served.lock().expect("scheduled events lock");
        let s = current(&mut served, file);
        let mut changed = false;
        for r in &approval.start_requests {
            let Some(e) = s
                .file
                .events
                .iter()
                .find(|e| event_id(e).eq_ignore_ascii_case(&r.event_id))
            else {
                continue;
            };
            let id = event_id(e);
            if e.get("EventStatus").and_then(Json::as_str) == Some("Started")
                || s.started.iter().any(|s| s.eq_ignore_ascii_case(id))
            {
                continue;
            }
            s.started.push(id.to_owned());
            changed = true;
        }
        if changed {
            s.incarnation += 1;
        }
        Ok(())
    }
}

fn event_id(e: &Json) -> &str {
    e.get("EventId").and_then(Json::as_str).unwrap_or("")
}

/// The served state, brought up to `file`: on the first call it starts at the file's
/// incarnation; when the file's events changed since, the incarnation goes up (by one,
/// or to the file's when that is higher) and approvals of events no longer listed are
/// forgotten.
fn current<'a>(served: &'a mut Option<Served>, file: &ScheduledEvents) -> &'a mut Served {
    match served {
        None => {
            *served = Some(Served {
                file: file.clone(),
                incarnation: file.document_incarnation,
                started: Vec::new(),
            })
        }
        Some(s) if s.file != *file => {
            s.incarnation = (s.incarnation + 1).max(file.document_incarnation);
            s.file = file.clone();
            let listed = |id: &String| {
                file.events
                    .iter()
                    .any(|e| event_id(e).eq_ignore_ascii_case(id))
            };
            s.started.retain(listed);
        }
        Some(_) => {}
    }
    served.as_mut().expect("just set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ids: &[&str]) -> ScheduledEvents {
        ScheduledEvents {
            document_incarnation: 1,
            events: ids
                .iter()
                .map(
                    |id| json!({"EventId": id, "EventStatus": "Scheduled", "DurationInSeconds": 9}),
                )
                .collect(),
        }
    }

    fn status(d: &Json, i: usize) -> &str {
        d["Events"][i]["EventStatus"].as_str().unwrap_or("")
    }

    #[test]
    fn approvals_start_events_and_bump_the_incarnation() {
        let ev = Events::default();
        let f = file(&["a-1", "b-2"]);
        assert_eq!(ev.document(&f)["DocumentIncarnation"], 1);
        assert_eq!(ev.document(&f)["Events"][0]["DurationInSeconds"], 9);
        assert_eq!(status(&ev.document(&f), 0), "Scheduled");
        ev.approve(&f, br#"{"StartRequests":[{"EventId":"A-1"}]}"#)
            .unwrap();
        let d = ev.document(&f);
        assert_eq!(d["DocumentIncarnation"], 2);
        assert_eq!(d["Events"].as_array().unwrap().len(), 2, "still listed");
        assert_eq!(d["Events"][0]["EventId"], "a-1");
        assert_eq!(status(&d, 0), "Started");
        assert_eq!(status(&d, 1), "Scheduled");
        // Approving what is started, or not listed, changes nothing.
        ev.approve(
            &f,
            br#"{"StartRequests":[{"EventId":"a-1"},{"EventId":"z-9"}]}"#,
        )
        .unwrap();
        assert_eq!(ev.document(&f)["DocumentIncarnation"], 2);
    }

    #[test]
    fn the_incarnation_never_goes_back_and_started_events_leave_with_the_file() {
        let ev = Events::default();
        let f = file(&["a-1", "b-2"]);
        ev.document(&f);
        ev.approve(&f, br#"{"StartRequests":[{"EventId":"a-1"}]}"#)
            .unwrap();
        assert_eq!(ev.document(&f)["DocumentIncarnation"], 2);
        // The file gains an event but still says 1: the number goes on, not back, and
        // the approved event stays started.
        let g = file(&["a-1", "b-2", "c-3"]);
        let d = ev.document(&g);
        assert_eq!(d["DocumentIncarnation"], 3);
        assert_eq!(status(&d, 0), "Started");
        assert_eq!(status(&d, 2), "Scheduled");
        assert_eq!(
            ev.document(&g)["DocumentIncarnation"],
            3,
            "unchanged, the same"
        );
        // The file drops the started event: it is gone.
        let h = file(&["b-2", "c-3"]);
        let d = ev.document(&h);
        assert_eq!(d["DocumentIncarnation"], 4);
        assert_eq!(d["Events"].as_array().unwrap().len(), 2);
        assert_eq!(d["Events"][0]["EventId"], "b-2");
        // Back to the first file: a-1 is a new event, scheduled, and the number still
        // goes up.
        let d = ev.document(&f);
        assert_eq!(d["DocumentIncarnation"], 5);
        assert_eq!(status(&d, 0), "Scheduled");
        // A file that sets a higher incarnation is followed.
        let mut k = file(&["d-4"]);
        k.document_incarnation = 40;
        assert_eq!(ev.document(&k)["DocumentIncarnation"], 40);
        ev.approve(&k, br#"{"StartRequests":[{"EventId":"d-4"}]}"#)
            .unwrap();
        assert_eq!(ev.document(&k)["DocumentIncarnation"], 41);
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
